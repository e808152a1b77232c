"""Real images for export: the run's split (split.json) through the one ``Preprocess``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imgcls.export.errors import ExportError
from imgcls.models.core.dataset import SPLIT_FILENAME, DatasetError, Sample, SplitListing, make_split
from imgcls.models.core.preprocess import ImageDecodeError, Preprocess

log = logging.getLogger(__name__)


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


def check_classes(split: SplitListing, class_names: Sequence[str]) -> None:
    if tuple(split.class_names) != tuple(class_names):
        raise ExportError(
            f"the images' classes {list(split.class_names)} differ from the card's {list(class_names)}"
        )


def load_pixels(
    split: SplitListing, samples: Iterable[Sample], preprocess: Preprocess, limit: int | None = None
) -> LabelledPixels:
    """Decode and preprocess up to ``limit`` samples; unreadable files are skipped with a warning."""
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    for sample in samples:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            arrays.append(preprocess.pixels(preprocess.load(split.absolute(sample))))
        except ImageDecodeError as exc:
            log.warning("skipping %s: %s", sample.path, exc)
            continue
        labels.append(sample.label)
        paths.append(sample.path)
    size = preprocess.crop_size
    stacked = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    return LabelledPixels(stacked, np.asarray(labels, dtype=np.int64), tuple(paths))


def parity_pixels(split: SplitListing, preprocess: Preprocess, count: int) -> LabelledPixels:
    """Validation images first, topped up with training images when the split is small."""
    chosen = load_pixels(split, list(split.val) + list(split.train), preprocess, count)
    if len(chosen.labels) < 2:
        raise ExportError(f"parity needs at least 2 readable images under {split.root}, found {len(chosen.labels)}")
    return chosen
