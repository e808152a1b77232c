"""Crash-safe result files for ``imgcls score``: CSV, JSONL, Parquet, with ``--resume``.

One flat row schema in every format: ``path, label_1, score_1, ..., label_k, score_k, error,
message, abstained, uncalibrated_score_1, model_version, precision`` (``error`` is the
``ImageDecodeError`` reason, empty/null when the image was scored; ``abstained`` is true when
score_1 is below the run's ``min_score``; ``uncalibrated_score_1`` is the top-1 softmax before the
card's temperature; the last two name the model file that produced the row, so a results file
always says which model wrote it and ``--resume`` refuses to mix two models in one file).

CSV and JSONL are appended one batch at a time, each batch flushed and fsync'ed, so a kill loses
at most the batch in flight. A torn last line (a kill in the middle of a write) is cut off when
the file is opened again with ``--resume``. Parquet cannot be appended to: each batch becomes an
atomically renamed part file in ``<out>.parts/``; a finished run merges the parts (and the rows of
an earlier ``<out>``) into ``<out>`` and removes the directory; ``--resume`` reads both.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgcls.models.core.atomic import write_atomically

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
Row = dict[str, Any]
PROVENANCE = ("model_version", "precision")  # the same in every row of one output file
ABSTAINED, UNCALIBRATED = "abstained", "uncalibrated_score_1"


class OutputError(ValueError):
    """An output file that cannot be written or resumed as asked (the message says why)."""


def columns(k: int) -> list[str]:
    ranked = [name for j in range(1, k + 1) for name in (f"label_{j}", f"score_{j}")]
    return ["path", *ranked, "error", "message", ABSTAINED, UNCALIBRATED, *PROVENANCE]


def check_provenance(path: Path, existing: Sequence[Row], provenance: Mapping[str, Any] | None) -> None:
    """Refuse to resume a file that another model (or precision) wrote: rows would be mixed."""
    if provenance is None:
        return
    ours = {key: provenance.get(key) for key in PROVENANCE}
    for row in existing:
        theirs = {key: row.get(key) for key in PROVENANCE}
        if theirs != ours:
            raise OutputError(
                f"--resume {path}: its rows were written by {_describe(theirs)}, this run uses {_describe(ours)}; "
                "resume with the same bundle and --precision, or write to a new --out"
            )


def _describe(provenance: Mapping[str, Any]) -> str:
    return " ".join(f"{key} {provenance.get(key)!r}" for key in PROVENANCE)


def is_score(name: str) -> bool:
    return name.startswith("score_") or name == UNCALIBRATED


def arrow_schema(names: Sequence[str]):
    """The Arrow schema of the rows (Parquet files and the Ray engine's batches): float32 scores, a bool
    ``abstained``, strings."""
    import pyarrow as pa  # lazily: only Parquet output needs it

    return pa.schema([
        (name, pa.float32() if is_score(name) else pa.bool_() if name == ABSTAINED else pa.string())
        for name in names
    ])


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"--out {path}: unknown format {suffix!r}; use .csv, .jsonl or .parquet")
    return FORMATS[suffix]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_tail(path: Path) -> bytes:
    """The file's bytes up to its last complete line; a torn tail is truncated away on disk."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: removing a torn last line (%d bytes) left by an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())
        data = data[:keep]
    return data


class _AppendingOutput:
    """Common part of CSV and JSONL: open (new / resume / overwrite), append batches durably."""

    def __init__(self, path: Path, names: list[str], resume: bool, provenance: Mapping[str, Any] | None = None) -> None:
        self.path, self.columns, self.provenance = path, names, dict(provenance or {})
        rows: list[Row] = []
        if resume and path.exists():
            data = _repair_tail(path)
            rows = self._parse(data.decode("utf-8")) if data else []
        self.existing = rows
        fresh = not (resume and path.exists() and path.stat().st_size > 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "w" if fresh else "a", encoding="utf-8", newline="")
        if fresh:
            self._append(self._header())

    def _header(self) -> str:
        return ""

    def _parse(self, text: str) -> list[Row]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _format(self, rows: Sequence[Row]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _append(self, text: str) -> None:
        if text:
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def write(self, rows: Sequence[Row]) -> None:
        self._append(self._format([{**row, **self.provenance} for row in rows]))

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


class CsvOutput(_AppendingOutput):
    def _header(self) -> str:
        return self._format_values([self.columns])

    @staticmethod
    def _format_values(records: Sequence[Sequence[Any]]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(records)
        return buffer.getvalue()

    def _format(self, rows: Sequence[Row]) -> str:
        return self._format_values([[_csv_cell(row.get(name)) for name in self.columns] for row in rows])

    def _parse(self, text: str) -> list[Row]:
        records = list(csv.reader(io.StringIO(text, newline="")))
        if not records:
            return []
        if records[0] != self.columns:
            raise OutputError(
                f"{self.path}: its columns {records[0]} differ from this run's {self.columns} "
                "(another --top-k, or an older imgcls: resume with the same --top-k, or write to a new file)"
            )
        rows = []
        for number, record in enumerate(records[1:], start=2):
            if len(record) != len(self.columns):
                raise OutputError(f"{self.path}: record {number} has {len(record)} fields, expected {len(self.columns)}")
            rows.append(_typed(dict(zip(self.columns, record))))
        return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".7g")
    return value


def _typed(row: Row) -> Row:
    """CSV strings back to None / float / bool."""
    for name, value in row.items():
        if value == "":
            row[name] = None
        elif is_score(name):
            row[name] = float(value)
        elif name == ABSTAINED:
            row[name] = value == "true"
    return row


class JsonlOutput(_AppendingOutput):
    def _format(self, rows: Sequence[Row]) -> str:
        return "".join(json.dumps({n: row.get(n) for n in self.columns}, ensure_ascii=False) + "\n" for row in rows)

    def _parse(self, text: str) -> list[Row]:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OutputError(f"{self.path}: line {number} is not JSON ({exc})") from exc
            if not isinstance(row, dict) or list(row) != self.columns:
                raise OutputError(
                    f"{self.path}: line {number} has keys {list(row) if isinstance(row, dict) else row!r}, "
                    f"expected {self.columns} (another --top-k, or an older imgcls: resume with the same --top-k, or write to a new file)"
                )
            rows.append(row)
        return rows


class ParquetOutput:
    """Part files per batch in ``<out>.parts/``, merged into ``<out>`` by ``finish()``."""

    def __init__(self, path: Path, names: list[str], resume: bool, provenance: Mapping[str, Any] | None = None) -> None:
        self.path, self.columns, self.provenance = path, names, dict(provenance or {})
        self.parts = path.with_name(path.name + ".parts")
        self.schema = arrow_schema(names)
        if not resume:
            shutil.rmtree(self.parts, ignore_errors=True)
            path.unlink(missing_ok=True)
        self.existing = self._read_existing()
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self._part_files()), default=0)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def _read_table(self, file: Path):
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        if table.schema.names != self.columns:
            raise OutputError(
                f"{file}: its columns {table.schema.names} differ from this run's {self.columns} "
                "(another --top-k, or an older imgcls: resume with the same --top-k, or write to a new file)"
            )
        return table

    def _read_existing(self) -> list[Row]:
        files = ([self.path] if self.path.exists() else []) + self._part_files()
        return [row for file in files for row in self._read_table(file).to_pylist()]

    def write(self, rows: Sequence[Row]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = [{**row, **self.provenance} for row in rows]
        table = pa.Table.from_pylist([{n: row.get(n) for n in self.columns} for row in records], schema=self.schema)
        self.parts.mkdir(parents=True, exist_ok=True)
        target = self.parts / f"part-{self._next:06d}.parquet"
        temporary = self.parts / f".{target.name}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_dir(self.parts)
        self._next += 1

    def finish(self) -> None:
        """Merge the earlier ``<out>`` and all parts into ``<out>`` (atomically), drop the parts."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = ([self.path] if self.path.exists() else []) + self._part_files()
        tables = [self._read_table(file) for file in files] or [self.schema.empty_table()]
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.concat_tables(tables), buffer)
        write_atomically(self.path, buffer.getvalue().to_pybytes())
        shutil.rmtree(self.parts, ignore_errors=True)

    def close(self) -> None:
        """Leave the parts in place: an unfinished run resumes from them."""


def _leading_columns(path: Path, kind: str) -> list[str]:
    """The column names a results file starts with (its CSV header, first JSON line's keys, Parquet schema)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, encoding="utf-8", newline="") as handle:
        first = handle.readline(1 << 16)
    if kind == "csv":
        return next(csv.reader([first]), [])
    record = json.loads(first)
    return list(record) if isinstance(record, dict) else []


def is_scores_file(path: str | Path) -> bool:
    """``path`` is a results file imgcls score wrote (any version, any --top-k): recognised by its columns."""
    try:
        names = _leading_columns(Path(path), output_format(path))
    except Exception:  # unreadable, not UTF-8 / JSON / Parquet (pyarrow raises its own types)
        return False
    return names[:3] == ["path", "label_1", "score_1"]


def _is_parts_dir(parts: Path) -> bool:
    """``<out>.parts/`` holds only part files (and their temporaries) of an unfinished Parquet run."""
    return parts.is_dir() and all(
        p.is_file() and p.name.startswith(("part-", ".part-")) and p.name.endswith((".parquet", ".parquet.tmp"))
        for p in parts.rglob("*"))


def check_ours(path: Path, kind: str) -> None:
    """Before resuming or replacing: ``path`` (and a Parquet file's parts) must be results imgcls wrote."""
    from imgcls.models.core.ownership import OwnershipError, check_replaceable_file

    try:
        check_replaceable_file(path, f"a {kind.upper() if kind != 'parquet' else 'Parquet'} results file",
                               is_scores_file)
    except OwnershipError as exc:
        raise OutputError(str(exc)) from None
    parts = path.with_name(path.name + ".parts")
    if kind == "parquet" and parts.exists() and not _is_parts_dir(parts):
        raise OutputError(f"{parts} holds files imgcls score did not write as part files; it is left untouched: "
                          "choose another --out")


def check_out_apart(out: Path, bundle: Path, inputs: Sequence[str], lists: Sequence[str]) -> None:
    """``--out`` may not be, hold or sit inside the bundle, nor be or hold an input; it may sit in an input folder."""
    from imgcls.models.core.ownership import OwnershipError, check_disjoint

    local = [("input", Path(p)) for p in inputs if "://" not in p and Path(p).exists()]
    try:
        check_disjoint(out, [("the bundle", bundle), *local, *(("--list", Path(p)) for p in lists)],
                       inside_ok=("input",))
    except OwnershipError as exc:
        raise OutputError(str(exc)) from None


def open_output(path: str | Path, k: int, resume: bool, overwrite: bool, provenance: Mapping[str, Any] | None = None):
    """A CsvOutput / JsonlOutput / ParquetOutput whose ``existing`` rows are the ones to skip.

    ``provenance`` (model_version, precision) is written into every row; resuming a file whose
    rows carry another provenance raises ``OutputError`` naming both.
    """
    path = Path(path)
    kind = output_format(path)
    parts = path.with_name(path.name + ".parts")
    if not resume and not overwrite and (path.exists() or (kind == "parquet" and parts.exists())):
        raise OutputError(f"--out {path} already exists: pass --resume to continue it or --overwrite to replace it")
    check_ours(path, kind)
    names = columns(k)
    kinds = {"csv": CsvOutput, "jsonl": JsonlOutput, "parquet": ParquetOutput}
    output = kinds[kind](path, names, resume, provenance)
    try:
        check_provenance(path, output.existing, provenance)
    except OutputError:
        output.close()
        raise
    return output


def read_rows(path: str | Path, k: int) -> list[Row]:
    """All rows of a finished output file (for evaluation and tests)."""
    output = open_output(path, k, resume=True, overwrite=False)
    try:
        return list(output.existing)
    finally:
        output.close()
