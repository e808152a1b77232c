"""What imgcls may replace: artefact markers, ``--overwrite`` checks, ``--out`` against the inputs (stdlib only).

Every folder an imgcls command creates carries ``.imgcls.json`` (``MARKER``): the kind of artefact
(``run``, ``bundle``, ``digits``, ``scores``, ``stock-photos``), the command that wrote it and the
imgcls version. A command replaces a folder only when it holds that command's own kind: the
marker says so, or (a folder from an imgcls that wrote no marker) its layout verifies as that kind
(``KINDS``). An empty folder is always fine; anything else is refused with ``OwnershipError``,
naming the folder, why it is kept and what to do. ``check_disjoint`` refuses an ``--out`` equal
to, inside or containing one of the command's inputs (symlinks resolved).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from imgcls.models.core.atomic import write_atomically

MARKER = ".imgcls.json"
MARKER_FORMAT = 1


class OwnershipError(ValueError):
    """An ``--out`` that imgcls may not write or replace; the message names it, why, and what to do."""


def _is_run(folder: Path) -> bool:
    checkpoint = folder / "checkpoint"
    complete = (checkpoint / "card.json").is_file() and (checkpoint / "weights.safetensors").is_file()
    started = (folder / "split.json").is_file() and any(
        (folder / name).is_file() for name in ("train_state.pt", "metrics.jsonl"))
    return complete or started


def _is_bundle(folder: Path) -> bool:
    return (folder / "card.json").is_file() and any(folder.glob("*.onnx"))


def _is_digits(folder: Path) -> bool:
    entries = list(folder.iterdir())
    return bool(entries) and all(
        entry.is_dir() and entry.name.isdigit() and len(entry.name) == 1
        and all(f.is_file() and f.suffix == ".png" and f.stem.isdigit() for f in entry.iterdir())
        for entry in entries)


def _is_scores(folder: Path) -> bool:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return bool(files) and all(p.suffix == ".parquet" or p.name.startswith(".") for p in files)


def _is_photos(folder: Path) -> bool:
    return all(entry.is_file() and entry.suffix == ".png" for entry in folder.iterdir())


def _bundle_strangers(folder: Path) -> list[str]:
    owned = ("card.json", "export_report.json", "edge", MARKER)
    return [p.name for p in folder.iterdir()
            if p.name not in owned and not p.name.endswith((".onnx", ".onnx.data"))]


def _scores_strangers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and p.suffix != ".parquet" and p.name != MARKER]


@dataclass(frozen=True)
class Kind:
    """One kind of artefact folder: who writes it, how an unmarked one is recognised, what it may not hold."""

    name: str
    command: str
    description: str
    layout: Callable[[Path], bool]  # a folder written before markers existed, recognised by its files
    strangers: Callable[[Path], list[str]] = lambda folder: []  # entries that replacing it would destroy


KINDS = {kind.name: kind for kind in (
    Kind("run", "imgcls train", "a training run", _is_run),
    Kind("bundle", "imgcls export", "a bundle", _is_bundle, _bundle_strangers),
    Kind("digits", "imgcls digits", "the digits dataset", _is_digits),
    Kind("scores", "imgcls score", "a scores dataset directory", _is_scores, _scores_strangers),
    Kind("stock-photos", "python -m imgcls.stock_demo", "the stock demo's photos", _is_photos),
)}


def _kind(name: str) -> Kind:
    if name not in KINDS:
        raise KeyError(f"unknown artefact kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


def write_marker(folder: str | Path, kind: str) -> Path:
    """Record in ``folder/.imgcls.json`` that ``folder`` holds an artefact of ``kind`` (creates the folder)."""
    from imgcls import __version__

    spec = _kind(kind)
    record = {"kind": kind, "written_by": spec.command, "imgcls_version": __version__,
              "format_version": MARKER_FORMAT}
    path = Path(folder) / MARKER
    write_atomically(path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return path


def read_marker(folder: str | Path) -> dict | None:
    """The marker's record, or None when there is none (or it is not an imgcls marker)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("kind") in KINDS else None


def holds(folder: str | Path, kind: str) -> bool:
    """``folder`` holds an imgcls artefact of ``kind``: by its marker, or (no marker) by its layout."""
    folder, spec = Path(folder), _kind(kind)
    if not folder.is_dir():
        return False
    record = read_marker(folder)
    if record is not None:
        return record["kind"] == kind
    return spec.layout(folder)


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def check_replaceable(out: str | Path, kind: str, overwrite: bool, *, flag: str = "--out",
                      how: str = "pass --overwrite to replace it") -> bool:
    """May the command that writes ``kind`` write into ``out``? True when ``out`` holds such an artefact already.

    Missing or empty: fine (False). Holding ``kind``: fine with ``overwrite`` (True), else refused
    with ``how``. A file, another kind, or files imgcls did not write as ``kind``: always refused.
    """
    out, spec = Path(out), _kind(kind)
    if not out.exists():
        return False
    where = f"{flag} {out}"
    if not out.is_dir():
        raise OwnershipError(f"{where} is a file, not {spec.description} folder; it is left untouched: "
                             f"choose another {flag}")
    if not any(out.iterdir()):
        return False
    record = read_marker(out)
    if record is not None and record["kind"] != kind:
        theirs = KINDS[record["kind"]]
        raise OwnershipError(f"{where} holds {theirs.description} written by {theirs.command}, not "
                             f"{spec.description}; it is left untouched: choose another {flag}")
    if not holds(out, kind):
        raise OwnershipError(f"{where} holds files imgcls did not write as {spec.description} "
                             f"({_listing(out)}); it is left untouched: choose another {flag}")
    strangers = spec.strangers(out)
    if strangers:
        raise OwnershipError(f"{where} holds {spec.description}, but also files {spec.command} did not write "
                             f"({', '.join(sorted(strangers)[:5])}); it is left untouched: move them out "
                             f"or choose another {flag}")
    if not overwrite:
        raise OwnershipError(f"{where} already exists and holds {spec.description} ({_listing(out)}): {how}, "
                             f"or choose another {flag}")
    return True


def check_replaceable_file(out: str | Path, description: str, recognised: Callable[[Path], bool], *,
                           flag: str = "--out") -> None:
    """A single output file may be replaced only when it is empty or ``recognised`` as one imgcls wrote."""
    out = Path(out)
    if out.is_dir():
        raise OwnershipError(f"{flag} {out} is a directory, not {description}; it is left untouched: "
                             f"choose another {flag}")
    if out.is_file() and out.stat().st_size > 0 and not recognised(out):
        raise OwnershipError(f"{flag} {out} is not {description} written by imgcls; it is left untouched: "
                             f"choose another {flag}")


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def overlap(out: str | Path, other: str | Path) -> str | None:
    """How ``out`` and ``other`` overlap ("is", "is inside", "contains"), resolving symlinks; None if apart."""
    a, b = _resolved(out), _resolved(other)
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_disjoint(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]], *, flag: str = "--out",
                   inside_ok: Sequence[str] = ()) -> None:
    """Refuse an ``out`` equal to, inside or containing one of ``inputs`` ((what, path) pairs; None skipped).

    ``inside_ok`` names inputs that ``out`` may sit inside (e.g. a results file beside the images
    it scores: writing it there replaces nothing).
    """
    for what, path in inputs:
        if path is None:
            continue
        relation = overlap(out, path)
        if relation is None or (relation == "is inside" and what in inside_ok):
            continue
        resolved = f" ({_resolved(path)})" if _resolved(path) != Path(path).absolute() else ""
        raise OwnershipError(f"{flag} {out} {relation} {what} {path}{resolved}: the output may not overlap "
                             f"the command's inputs; choose an {flag} outside them")
