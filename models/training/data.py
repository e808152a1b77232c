"""Training and validation datasets over a ``SplitListing``.

Every image is decoded by ``load_image`` (through ``Preprocess.load``), so EXIF and mode handling
match serving. Evaluation uses ``Preprocess`` exactly. Training augmentation is a random-resized
crop at the card's crop size plus an optional horizontal flip, then the card's normalisation.
Augmentation randomness is derived from (seed, epoch, sample index) alone, so it does not depend
on worker count, process rank or where a resumed run restarted.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from imgcls.models.core.dataset import Sample, SplitListing
from imgcls.models.core.preprocess import INTERPOLATIONS, ImageDecodeError, Preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augmentation:
    crop_size: int
    interpolation: str
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: bool = True


def random_resized_crop_box(width: int, height: int, rng: random.Random, aug: Augmentation) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, driven by ``rng``: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*aug.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < aug.ratio[0]:
        w, h = width, int(round(width / aug.ratio[0]))
    elif in_ratio > aug.ratio[1]:
        w, h = int(round(height * aug.ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augment(image: Image.Image, rng: random.Random, aug: Augmentation) -> np.ndarray:
    """uint8 ``[3, crop, crop]`` from a random crop (resized to the crop size) and a coin-flip mirror."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng, aug)
    size = (aug.crop_size, aug.crop_size)
    crop = image.resize(size, INTERPOLATIONS[aug.interpolation], box=(left, top, left + w, top + h))
    if aug.hflip and rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(crop.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))


class ImageListDataset(Dataset):
    """(normalised float32 [3, crop, crop] tensor, label) for each sample of a listing; with
    ``pixels_only`` the uint8 pixels before normalisation (what an exported graph takes)."""

    def __init__(
        self,
        listing: SplitListing,
        samples: Sequence[Sample],
        preprocess: Preprocess,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.listing = listing
        self.samples = tuple(samples)
        self.preprocess = preprocess
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.pass_index = 0
        self.pixels_only = False

    def set_epoch(self, epoch: int, pass_index: int | None = None) -> None:
        """Augmentation of epoch ``epoch`` (or of cached-feature pass ``pass_index``)."""
        self.epoch = epoch
        self.pass_index = epoch if pass_index is None else pass_index

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = self.preprocess.load(self.listing.absolute(sample))
        if self.augmentation is None:
            pixels = self.preprocess.pixels(image)
        else:
            rng = random.Random(f"{self.seed}:{self.pass_index}:{index}")
            pixels = augment(image, rng, self.augmentation)
        if self.pixels_only:
            return torch.from_numpy(pixels), sample.label
        return torch.from_numpy(self.preprocess.normalize(pixels)), sample.label


def find_unreadable(
    listing: SplitListing,
    decode: Callable[[object], object],
    samples: Sequence[Sample] | None = None,
    threads: int = 4,
    progress: Callable[[Iterator], Iterator] = lambda it: it,
) -> list[tuple[str, str]]:
    """(relative path, reason) for every file of ``samples`` (default: the whole listing) that
    ``decode`` cannot read. Decoding runs on a few threads (Pillow releases the GIL)."""
    samples = listing.train + listing.val if samples is None else tuple(samples)

    def check(sample: Sample) -> tuple[str, str] | None:
        try:
            decode(listing.absolute(sample))
        except ImageDecodeError as exc:
            return sample.path, str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(progress(pool.map(check, samples)))
    return [r for r in results if r is not None]
