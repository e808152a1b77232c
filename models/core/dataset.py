"""ImageFolder scanning and the split listing a run keeps (stdlib only, no torch).

``runs/<run>/split.json`` records which files trained and which validated, with their labels, so
export (parity, INT8 calibration, accuracy gate) and evaluation reuse exactly that split.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from imgcls.models.core.atomic import write_atomically

# File names taken as images when folders are scanned (training data and scoring inputs alike).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".heic", ".heif", ".avif", ".jp2", ".j2k",
})
SPLIT_FILENAME = "split.json"


class DatasetError(ValueError):
    """A dataset layout that cannot be trained on; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the listing's root, with forward slashes
    label: int


@dataclass(frozen=True)
class SplitListing:
    root: str
    class_names: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    method: str  # "folders" (DIR/train + DIR/val) or "stratified"
    seed: int
    val_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "class_names": list(self.class_names),
            "method": self.method,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "train": [[s.path, s.label] for s in self.train],
            "val": [[s.path, s.label] for s in self.val],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SplitListing":
        try:
            return cls(
                root=str(data["root"]),
                class_names=tuple(str(c) for c in data["class_names"]),
                train=tuple(Sample(str(p), int(i)) for p, i in data["train"]),
                val=tuple(Sample(str(p), int(i)) for p, i in data["val"]),
                method=str(data["method"]),
                seed=int(data["seed"]),
                val_fraction=float(data["val_fraction"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"split listing: malformed ({exc!r})") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILENAME
        write_atomically(path, json.dumps(self.to_dict(), indent=1).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SplitListing":
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILENAME
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise DatasetError(f"split listing {path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise DatasetError(f"split listing {path}: not valid JSON ({exc})") from exc

    def sha256(self) -> str:
        """Hash of the listing (paths, labels, classes), for the card's lineage."""
        canonical = json.dumps({k: v for k, v in self.to_dict().items() if k != "root"}, sort_keys=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def absolute(self, sample: Sample) -> Path:
        return Path(self.root) / sample.path


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def scan_image_folder(directory: str | Path) -> tuple[tuple[str, ...], dict[str, list[Path]]]:
    """Class names (sorted subfolder names) and each class's image files.

    Refuses, with a message saying what to fix: a missing or empty folder, fewer than two
    classes, and a class folder that holds no images.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory: pass a folder laid out as DIR/<class>/<image>")
    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        stray = _image_files(directory)
        hint = f" (found {len(stray)} images directly inside it: move them into one folder per class)" if stray else ""
        raise DatasetError(f"{directory} has no class folders{hint}; expected DIR/<class>/<image>")
    files = {d.name: _image_files(d) for d in class_dirs}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DatasetError(
            f"{directory}: class folder(s) with no images: {', '.join(empty)} "
            f"(add images with one of {', '.join(sorted(IMAGE_EXTENSIONS))}, or remove the folder)"
        )
    if len(class_dirs) < 2:
        raise DatasetError(
            f"{directory}: only one class ({class_dirs[0].name}); a classifier needs at least two class folders"
        )
    return tuple(d.name for d in class_dirs), files


def _samples(root: Path, class_names: tuple[str, ...], files: dict[str, list[Path]]) -> list[Sample]:
    return [
        Sample(path.relative_to(root).as_posix(), index)
        for index, name in enumerate(class_names)
        for path in files[name]
    ]


def make_split(data_dir: str | Path, val_fraction: float = 0.2, seed: int = 0) -> SplitListing:
    """``DIR/train`` + ``DIR/val`` when both exist, else a stratified split with ``seed``."""
    root = Path(data_dir).resolve()
    if (root / "train").is_dir() and (root / "val").is_dir():
        class_names, train_files = scan_image_folder(root / "train")
        val_names, val_files = scan_image_folder(root / "val")
        if val_names != class_names:
            raise DatasetError(
                f"{root}: train and val have different class folders: "
                f"only in train {sorted(set(class_names) - set(val_names))}, "
                f"only in val {sorted(set(val_names) - set(class_names))}"
            )
        return SplitListing(
            str(root), class_names, tuple(_samples(root, class_names, train_files)),
            tuple(_samples(root, class_names, val_files)), "folders", seed, 0.0,
        )
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    class_names, files = scan_image_folder(root)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for index, name in enumerate(class_names):
        samples = [Sample(p.relative_to(root).as_posix(), index) for p in files[name]]
        rng.shuffle(samples)
        if len(samples) < 2:
            raise DatasetError(f"{root}/{name}: needs at least 2 images to split into train and val")
        n_val = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
        val.extend(samples[:n_val])
        train.extend(samples[n_val:])
    key = lambda s: (s.label, s.path)  # noqa: E731 - stable order independent of shuffling
    return SplitListing(
        str(root), class_names, tuple(sorted(train, key=key)), tuple(sorted(val, key=key)),
        "stratified", seed, val_fraction,
    )


def without_files(listing: SplitListing, excluded: set[str] | frozenset[str]) -> SplitListing:
    """The listing minus ``excluded`` paths (e.g. unreadable files); refuses if a class loses all of
    its training or validation images, naming the class."""
    train = tuple(s for s in listing.train if s.path not in excluded)
    val = tuple(s for s in listing.val if s.path not in excluded)
    for part, samples in (("training", train), ("validation", val)):
        present = {s.label for s in samples}
        lost = [name for index, name in enumerate(listing.class_names) if index not in present]
        if lost:
            raise DatasetError(
                f"{listing.root}: class(es) {', '.join(lost)} have no readable {part} images left "
                f"after skipping {len(excluded)} unreadable file(s); fix or remove those files"
            )
    return SplitListing(
        listing.root, listing.class_names, train, val, listing.method, listing.seed, listing.val_fraction
    )
