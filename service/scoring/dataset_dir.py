"""A Parquet *dataset directory* as ``imgcls score --out``: many part files written in parallel by
the Ray engine's workers (``Dataset.write_parquet``), read back as one table.

The rows have the schema of every other output (``outputs.columns`` / ``outputs.arrow_schema``).
``--resume`` reads the parts already there and appends new ones (new file names); ``--overwrite``
removes the directory first, but only when it is a scores directory imgcls wrote (its marker, or
nothing but Parquet files: ``core.ownership``), so a mistyped ``--out`` never deletes unrelated data.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from imgcls.models.core.ownership import OwnershipError, check_replaceable, write_marker
from imgcls.service.scoring.outputs import FORMATS, OutputError, Row, columns, read_rows

log = logging.getLogger(__name__)


def is_dataset_dir(out: str | Path) -> bool:
    """``--out`` names a dataset directory: an existing directory, or a path without a suffix."""
    out = Path(out)
    return out.is_dir() or (out.suffix == "" and not out.is_file())


def part_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))


def read_dataset_rows(out: str | Path, k: int, fields: list[str] | None = None) -> list[Row]:
    """Every row of the parts in ``out`` (only ``fields`` when given), checking their columns."""
    import pyarrow.parquet as pq

    out, names = Path(out), columns(k)
    rows: list[Row] = []
    for file in part_files(out):
        schema_names = pq.read_schema(file).names
        if schema_names != names:
            raise OutputError(
                f"{file}: its columns {schema_names} differ from this run's {names} "
                "(resume with the same --top-k, or write to a new directory)"
            )
        rows.extend(pq.read_table(file, columns=fields or names).to_pylist())
    return rows


def prepare_dataset_dir(out: Path, k: int, resume: bool, overwrite: bool) -> list[Row]:
    """Make ``out`` ready for new parts; returns the rows already there (``--resume``)."""
    if out.is_file():
        raise OutputError(f"--out {out} is a file; a Parquet dataset needs a directory")
    if out.suffix.lower() in FORMATS:
        raise OutputError(f"--out {out}: a {out.suffix} name is a file, not a dataset directory")
    try:
        held = check_replaceable(out, "scores", overwrite or resume,
                                 how="pass --resume to continue it or --overwrite to replace it")
    except OwnershipError as exc:
        raise OutputError(str(exc)) from None
    if held and not resume:
        log.info("removing the earlier dataset %s (--overwrite)", out)
        shutil.rmtree(out)
    existing = read_dataset_rows(out, k) if out.is_dir() else []
    write_marker(out, "scores")
    return existing


def read_scored_rows(out: str | Path, k: int) -> list[Row]:
    """All rows of a finished output: a dataset directory or a CSV/JSONL/Parquet file."""
    return read_dataset_rows(out, k) if Path(out).is_dir() else read_rows(out, k)
