"""``imgcls score --split val|train|all``: score a run's split, and say when training images are scored.

The split a model was trained on is found through the bundle's lineage: ``export_report.json``
names the run folder the bundle was exported from, whose ``split.json`` must hash to the card's
``lineage.dataset_sha256`` (a run folder trained again since holds another split). ``--split-file``
names a split listing (or a run folder) directly. The labels of the split's images are its own
class names, so ``--split`` evaluates without ``--labels``.

Whatever the inputs, the scored images that trained the model (the lineage split's ``train`` part)
are counted and reported: figures over them are optimistic.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SPLIT_FILENAME, DatasetError, Sample, SplitListing
from imgcls.service.scoring.inputs import InputError, parse_shard, select_paths, shard
from imgcls.service.scoring.report import load_labels

log = logging.getLogger("imgcls.score")

SPLITS = ("val", "train", "all")
REPORT_FILENAME = "export_report.json"


@dataclass(frozen=True)
class LineageSplit:
    """The model's own split listing when lineage finds it (``listing`` None), and where it looked."""
    listing: SplitListing | None
    looked: tuple[str, ...]


def _run_folders(bundle: Path, card: ModelCard, split_file: Path | None) -> list[tuple[Path, str]]:
    """Run folders the lineage names (and --split-file's), with where each name came from."""
    found: list[tuple[Path, str]] = []
    if split_file is not None:
        found.append((split_file.parent if split_file.is_file() else split_file, "--split-file"))
    try:
        run = json.loads((bundle / REPORT_FILENAME).read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError, AttributeError):
        run = None
    if isinstance(run, str) and run:
        found.append((Path(run), f"{bundle / REPORT_FILENAME} 'run'"))
    out = card.train.get("out") if isinstance(card.train, Mapping) else None
    if isinstance(out, str) and out:
        found.append((Path(out), f"card.json train.out {out!r}"))
    return found


def _split_of(run: Path) -> Path:
    """``RUN/split.json``, also when the lineage names ``RUN/checkpoint``."""
    if not (run / SPLIT_FILENAME).is_file() and (run.parent / SPLIT_FILENAME).is_file():
        return run.parent / SPLIT_FILENAME
    return run / SPLIT_FILENAME


def lineage_split(bundle: Path, card: ModelCard, split_file: Path | None = None) -> LineageSplit:
    """The split.json the model was trained on, checked against ``card.lineage.dataset_sha256``
    (``split_file``, when given, is the first candidate)."""
    expected = card.lineage.get("dataset_sha256")
    looked: list[str] = []
    for run, origin in _run_folders(bundle, card, split_file):
        path = split_file if origin == "--split-file" and split_file.is_file() else _split_of(run)
        try:
            listing = SplitListing.load(path)
        except DatasetError as exc:
            looked.append(f"{path} (from {origin}): {'missing' if not path.exists() else exc}")
            continue
        if expected and listing.sha256() != expected:
            looked.append(f"{path} (from {origin}): another split than the model's (the run was trained again?)")
            continue
        return LineageSplit(listing, (str(path),))
    if not looked:
        looked.append(f"{bundle / REPORT_FILENAME} and card.json name no run folder (a stock or moved bundle)")
    return LineageSplit(None, tuple(looked))


def _samples(listing: SplitListing, which: str) -> tuple[Sample, ...]:
    return {"val": listing.val, "train": listing.train, "all": listing.train + listing.val}[which]


def split_inputs(bundle: Path, card: ModelCard, which: str, split_file: Path | None,
                 shard_spec: str | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(sorted paths, absolute path -> class name) of the ``which`` part of the split; ``InputError``
    naming where it looked when there is no split to read."""
    if split_file is not None:
        try:
            listing = SplitListing.load(split_file)
        except DatasetError as exc:
            raise InputError(f"--split-file: {exc}") from exc
    else:
        found = lineage_split(bundle, card)
        if found.listing is None:
            raise InputError(f"--split {which}: no split.json of the run that trained {bundle} was found; looked at "
                             f"{'; '.join(found.looked)}. Pass --split-file RUN/split.json")
        listing = found.listing
    if not Path(listing.root).is_dir():
        raise InputError(f"--split {which}: the split's images were under {listing.root}, which is not a folder now")
    samples = _samples(listing, which)
    paths = sorted(str(listing.absolute(sample)) for sample in samples)
    if shard_spec:
        index, count = parse_shard(shard_spec)
        paths = list(shard(paths, index, count))
    if not paths:
        raise InputError(f"--split {which}: the split lists no images")
    labels = {os.path.abspath(listing.absolute(s)): listing.class_names[s.label] for s in samples}
    log.info("--split %s: %d image(s) of %s", which, len(paths), listing.root)
    return tuple(paths), labels


def warn_training_images(bundle: Path, card: ModelCard, paths: Sequence[str], split_file: Path | None = None) -> int:
    """Log a warning when ``paths`` include images the model was trained on; returns how many."""
    listing = lineage_split(bundle, card, split_file).listing
    if listing is None:
        log.debug("no split.json found through the lineage: cannot tell which images trained %s", bundle)
        return 0
    trained = {os.path.realpath(listing.absolute(sample)) for sample in listing.train}
    count = sum(1 for path in paths if os.path.realpath(path) in trained)
    if count:
        log.warning("%d of %d scored images were used to train this model: metrics over them are optimistic; "
                    "use --split val", count, len(paths))
    return count


def select_inputs(args: argparse.Namespace, card: ModelCard) -> tuple[tuple[str, ...], dict[str, str] | None, int]:
    """(paths to score, path -> label or None, how many of the paths trained the model): from INPUTS and
    --list, or from --split; labels from --labels, else the split's own."""
    if args.split:
        paths, labels = split_inputs(args.bundle, card, args.split, args.split_file, args.shard)
    else:
        paths = select_paths(args.inputs, all_files=args.all_files, shard_spec=args.shard, lists=args.lists)
        labels = None
    if args.labels:
        labels = load_labels(args.labels, paths)
    return paths, labels, warn_training_images(args.bundle, card, paths, args.split_file)
