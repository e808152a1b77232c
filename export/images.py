"""Real images for export: the run's split (split.json) through the one ``Preprocess``.

Fitting and grading never share an image: ``held_out`` removes the gate's images (the split's
``val``) from the images anything is fitted on (``train``: INT8 calibration ranges, the retrained
head, QAT, sensitivity ranking), and ``image_set`` records each set in the card as a count and the
SHA-256 of its sorted path list, refusing a set that overlaps the gate's.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from imgcls.export.errors import ExportError, UsageError
from imgcls.models.core.cpu import machine_cores
from imgcls.models.core.dataset import SPLIT_FILENAME, DatasetError, Sample, SplitListing, make_split
from imgcls.models.core.prefetch import decoded_batches
from imgcls.models.core.preprocess import ImageDecodeError, Preprocess

log = logging.getLogger(__name__)
LOAD_CHUNK = 64  # images decoded per step (load_pixels: the most decoded past a limit)


@dataclass(frozen=True)
class LabelledPixels:
    pixels: np.ndarray  # uint8 [N, 3, H, W]
    labels: np.ndarray  # int64 [N]
    paths: tuple[str, ...]


def load_split(run_dir: Path, data_dir: Path | None) -> SplitListing:
    """The run's split.json (with its root replaced by ``data_dir`` if given), else a split of ``data_dir``."""
    split_path = run_dir / SPLIT_FILENAME
    try:
        if split_path.is_file():
            split = SplitListing.load(split_path)
            if data_dir is not None:
                split = SplitListing(str(Path(data_dir).resolve()), split.class_names, split.train,
                                     split.val, split.method, split.seed, split.val_fraction)
            return split
        if data_dir is not None:
            return make_split(data_dir)
    except DatasetError as exc:
        raise ExportError(f"export needs real images: {exc}") from exc
    raise ExportError(
        f"export needs real images for parity and calibration: {split_path} does not exist; "
        "pass --data DIR (an ImageFolder with the run's classes)"
    )


def check_gate_split(run_dir: Path, split: SplitListing, dataset_sha256: str | None) -> None:
    """The gates grade on ``split.val``: refuse a split that is not the run's own (a split made from
    --data when split.json is gone), whose validation images may be images the run trained on."""
    if (run_dir / SPLIT_FILENAME).is_file() or dataset_sha256 == split.sha256():
        return
    raise UsageError(
        f"{run_dir} has no {SPLIT_FILENAME}, and a split of {split.root} is not the listing the run trained "
        "with (its hash differs from the card's lineage), so an INT8/fp16 gate could grade on training images; "
        f"restore {run_dir / SPLIT_FILENAME}, or export without --int8/--fp16")


def held_out(split: SplitListing) -> SplitListing:
    """``split`` with every gate (``val``) image removed from its fitting (``train``) images."""
    gate = {s.path for s in split.val}
    fit = tuple(s for s in split.train if s.path not in gate)
    if len(fit) < len(split.train):
        log.warning("%d of the %d training images are also validation images: nothing is fitted on them",
                    len(split.train) - len(fit), len(split.train))
    return SplitListing(split.root, split.class_names, fit, split.val, split.method, split.seed, split.val_fraction)


def images_sha256(paths: Iterable[str]) -> str:
    """SHA-256 of the sorted, newline-joined relative paths: names an image set in the card."""
    return hashlib.sha256("\n".join(sorted(paths)).encode("utf-8")).hexdigest()


def image_set(paths: Sequence[str], gate: SplitListing | None = None, what: str = "fitted") -> dict[str, Any]:
    """``{"images": n, "images_sha256": ...}`` for a set; ``ExportError`` if it shares an image with
    ``gate.val`` (the images the gates grade on)."""
    if gate is not None:
        shared = sorted(set(paths) & {s.path for s in gate.val})
        if shared:
            raise ExportError(f"{len(shared)} image(s) {what} on are also graded on (e.g. {shared[0]}); "
                              "export never grades a model on images it was fitted on")
    return {"images": len(paths), "images_sha256": images_sha256(paths)}


def check_classes(split: SplitListing, class_names: Sequence[str]) -> None:
    if tuple(split.class_names) != tuple(class_names):
        raise ExportError(
            f"the images' classes {list(split.class_names)} differ from the card's {list(class_names)}"
        )


def _labelled(decoded: Sequence[tuple[Sample, np.ndarray]], preprocess: Preprocess) -> LabelledPixels:
    size = preprocess.crop_size
    stacked = np.stack([pixels for _, pixels in decoded]) if decoded else np.zeros((0, 3, size, size), np.uint8)
    return LabelledPixels(stacked, np.asarray([s.label for s, _ in decoded], dtype=np.int64),
                          tuple(s.path for s, _ in decoded))


def pixel_chunks(split: SplitListing, samples: Iterable[Sample], preprocess: Preprocess, chunk: int,
                 prefetch: int = 1) -> Iterator[LabelledPixels]:
    """The readable ``samples`` in order, ``chunk`` at a time (fewer where files could not be read:
    each is skipped with a warning), decoded by one thread per core ``prefetch`` chunks ahead of the
    caller (``imgcls.models.core.prefetch``, the Predictor's way), so decoding overlaps inference."""
    def decode(sample: Sample) -> np.ndarray:
        return preprocess.pixels(preprocess.load(split.absolute(sample)))

    with ThreadPoolExecutor(machine_cores(), thread_name_prefix="imgcls-export-decode") as pool:
        for batch in decoded_batches(samples, decode, chunk, pool, prefetch):
            decoded = []
            for sample, item in batch:
                if isinstance(item, ImageDecodeError):
                    log.warning("skipping %s: %s", sample.path, item)
                else:
                    decoded.append((sample, item))
            yield _labelled(decoded, preprocess)


def load_pixels(
    split: SplitListing, samples: Iterable[Sample], preprocess: Preprocess, limit: int | None = None
) -> LabelledPixels:
    """Decode and preprocess up to ``limit`` samples (in threads); unreadable files are skipped with a warning."""
    chunk = LOAD_CHUNK if limit is None else max(1, min(limit, LOAD_CHUNK))
    parts: list[LabelledPixels] = []
    count = 0
    for part in pixel_chunks(split, samples, preprocess, chunk, prefetch=0 if limit is not None else 1):
        parts.append(part)
        count += len(part.labels)
        if limit is not None and count >= limit:
            break
    if not parts:
        return _labelled([], preprocess)
    end = count if limit is None else min(count, limit)
    return LabelledPixels(np.concatenate([p.pixels for p in parts])[:end],
                          np.concatenate([p.labels for p in parts])[:end],
                          tuple(path for p in parts for path in p.paths)[:end])


def parity_pixels(split: SplitListing, preprocess: Preprocess, count: int) -> LabelledPixels:
    """Validation images first, topped up with training images when the split is small."""
    chosen = load_pixels(split, list(split.val) + list(split.train), preprocess, count)
    if len(chosen.labels) < 2:
        raise ExportError(f"parity needs at least 2 readable images under {split.root}, found {len(chosen.labels)}")
    return chosen
