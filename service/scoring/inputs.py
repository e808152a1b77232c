"""What ``imgcls score`` reads: input paths (directories, globs, list files), shards and labels.

Stdlib only. Paths are kept as the strings the user gave (normalised), sorted and deduplicated,
so the same command lists the same paths in the same order on every machine, which is what
``--shard i/n`` and ``--resume`` rely on.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from imgcls.models.core.dataset import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

LIST_EXTENSIONS = frozenset({".txt", ".csv"})  # other list files only through --list
GLOB_CHARACTERS = frozenset("*?[")


class InputError(ValueError):
    """An input argument that names nothing (missing path, glob without matches, bad list)."""


@dataclass(frozen=True)
class InputListing:
    paths: tuple[str, ...]  # sorted, unique
    skipped: int  # files under directories left out because their extension is not an image's


def _walk(directory: str, all_files: bool) -> tuple[list[str], int]:
    found, skipped = [], 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if all_files or os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
            else:
                skipped += 1
    return found, skipped


def _resolve_listed(list_file: str, entry: str) -> str:
    """Relative entries of a list file are relative to the list file's directory."""
    entry = entry.strip()
    if os.path.isabs(entry):
        return os.path.normpath(entry)
    return os.path.normpath(os.path.join(os.path.dirname(list_file), entry))


def read_csv_column(list_file: str, column: str) -> list[dict[str, str]]:
    with open(list_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        if column not in fields:
            raise InputError(f"{list_file}: no {column!r} column (columns: {reader.fieldnames})")
        return [{key.strip().lower(): (value or "") for key, value in row.items() if key} for row in reader]


def _read_list(list_file: str) -> list[str]:
    """Paths from a text list (one per line, # comments) or a CSV (a 'path' column, else column 1)."""
    try:
        if list_file.lower().endswith(".csv"):
            with open(list_file, newline="", encoding="utf-8-sig") as handle:
                rows = [row for row in csv.reader(handle) if row and row[0].strip()]
            header = [cell.strip().lower() for cell in rows[0]] if rows else []
            if "path" in header:
                column = header.index("path")
                entries = [row[column] for row in rows[1:] if len(row) > column]
            else:
                entries = [row[0] for row in rows]
        else:
            with open(list_file, encoding="utf-8-sig") as handle:
                entries = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the list file {list_file}: {exc}") from exc
    paths = [_resolve_listed(list_file, entry) for entry in entries if entry.strip()]
    missing = sum(1 for path in paths if not os.path.exists(path))
    if missing:
        log.warning("list file %s: %d of %d entries name no file (they become not_found rows)",
                    list_file, missing, len(paths))
    return paths


def list_inputs(inputs: Sequence[str], all_files: bool = False, lists: Sequence[str] = ()) -> InputListing:
    """Every image named by ``inputs`` and the list files ``lists``; ``InputError`` for one naming nothing.

    A file among ``inputs`` is read as a list of paths only when it is named ``.txt``/``.csv``;
    any other file is an image to score. ``lists`` are list files whatever their names.
    """
    paths: set[str] = set()
    skipped = 0
    for list_file in lists:
        if not os.path.isfile(list_file):
            raise InputError(f"--list {list_file!r}: no such file")
        paths.update(_read_list(list_file))
    for item in inputs:
        if os.path.isdir(item):
            found, left_out = _walk(item, all_files)
            paths.update(os.path.normpath(p) for p in found)
            skipped += left_out
        elif os.path.isfile(item):
            if os.path.splitext(item)[1].lower() in LIST_EXTENSIONS:
                paths.update(_read_list(item))
            else:
                paths.add(os.path.normpath(item))
        elif GLOB_CHARACTERS & set(item):
            matches = [m for m in glob.glob(item, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise InputError(f"the pattern {item!r} matches no files")
            paths.update(os.path.normpath(m) for m in matches)
        else:
            raise InputError(f"input {item!r} does not exist")
    if skipped:
        log.info("left out %d file(s) without an image extension (use --all-files to score them)", skipped)
    return InputListing(tuple(sorted(paths)), skipped)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (1-based: 1/4 .. 4/4) -> (i, n)."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError as exc:
        raise InputError(f"--shard: expected i/n such as 1/4, got {text!r}") from exc
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"--shard: need 1 <= i <= n, got {text!r}")
    return index, count


def shard(paths: Sequence[str], index: int, count: int) -> tuple[str, ...]:
    """Shard ``index`` of ``count`` (1-based): every count-th path of the sorted list, round robin."""
    return tuple(paths[index - 1::count])


def labels_from_folders(paths: Sequence[str]) -> dict[str, str]:
    """ImageFolder layout: the label is the name of the file's parent directory."""
    return {path: Path(path).parent.name for path in paths}


def labels_from_csv(csv_file: str) -> dict[str, str]:
    """A CSV with 'path' and 'label' columns (paths relative to the CSV's directory)."""
    try:
        rows = read_csv_column(csv_file, "path")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the labels file {csv_file}: {exc}") from exc
    if rows and "label" not in rows[0]:
        raise InputError(f"{csv_file}: no 'label' column (need columns path,label)")
    return {_resolve_listed(csv_file, row["path"]): row["label"].strip() for row in rows if row.get("path", "").strip()}


def select_paths(inputs: Sequence[str], all_files: bool = False, shard_spec: str | None = None,
                 lists: Sequence[str] = ()) -> tuple[str, ...]:
    """The paths one ``imgcls score`` run scores: the listing (inputs and --list files), cut to
    ``--shard i/n`` when given."""
    paths = list_inputs(inputs, all_files=all_files, lists=lists).paths
    if shard_spec:
        index, count = parse_shard(shard_spec)
        paths = shard(paths, index, count)
        log.info("shard %d/%d: %d image(s)", index, count, len(paths))
    if not paths:
        raise InputError("no images to score")
    return paths
