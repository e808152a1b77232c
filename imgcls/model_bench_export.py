"""The ONNX files ``imgcls models --benchmark`` times: each zoo architecture exported by the real
``imgcls.export`` code (``to_onnx``; INT8 by ``quantize_file``, the export's own static QDQ recipe),
cached per architecture, weights and toolchain under ``<cache>/onnx/``.

The weights are the architecture's pretrained ImageNet weights when they are available offline
(so the INT8 agreement measured on them says something), else random init: speed, size and FLOPs
do not depend on the values. Calibration and agreement images are random crops of the two
photographs scikit-learn ships, written once under ``<cache>/images/`` as an ImageFolder, split in half.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgcls.models.core.atomic import staged_directory
from imgcls.models.core.dataset import SplitListing, make_split

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
IMAGES_PER_CLASS = 32  # two photographs: 32 crops calibrate INT8, 32 measure its agreement with fp32


@dataclass(frozen=True)
class BenchModels:
    arch: str
    weights: str  # "imagenet" (pretrained, available offline) or "none" (random init)
    fp32: Path
    int8: Path | None  # None when INT8 was not asked for
    int8_settings: dict[str, Any]
    prepare_seconds: float  # spent exporting now (0.0 when reused from the cache)


def _target() -> str:
    """The export's INT8 target for this CPU (``imgcls.models.core.cpu``: vnni, arm64 or x86)."""
    from imgcls.models.core.cpu import local_target

    return local_target()


def _photo_crops(rng: np.random.Generator, photo: np.ndarray, count: int, size: int = 256) -> list[Image.Image]:
    """``count`` random square crops (10-100 % of the short side) of ``photo``, resized to ``size``."""
    image = Image.fromarray(photo, "RGB")
    short = min(image.size)
    crops = []
    for _ in range(count):
        side = int(short * rng.uniform(0.1, 1.0))
        left, top = (int(rng.integers(0, extent - side + 1)) for extent in image.size)
        crops.append(image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR))
    return crops


def photo_split(cache: Path) -> SplitListing:
    """``<cache>/images``: random crops of scikit-learn's two bundled photographs (china, flower),
    written once as an ImageFolder and split half and half (calibration / agreement)."""
    from sklearn.datasets import load_sample_images

    root = cache / "images"
    if not all((root / name / f"{IMAGES_PER_CLASS - 1:02d}.png").is_file() for name in ("china", "flower")):
        rng = np.random.default_rng(0)
        photos = load_sample_images()
        with staged_directory(root) as staging:
            for path, photo in zip(photos.filenames, photos.images):
                name = Path(path).stem
                (staging / name).mkdir()
                for i, crop in enumerate(_photo_crops(rng, photo, IMAGES_PER_CLASS)):
                    crop.save(staging / name / f"{i:02d}.png")
    return make_split(root, val_fraction=0.5, seed=0)


def _recipe(arch: str, weights: str, int8: bool) -> dict[str, Any]:
    import onnxruntime
    import torch

    from imgcls.export.config import DEFAULT_OPSET

    return {"version": RECIPE_VERSION, "arch": arch, "weights": weights, "int8": int8, "opset": DEFAULT_OPSET,
            "int8_target": _target() if int8 else None, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def _card(arch: str, weights: str):
    from imgcls.models.core.card import ModelCard
    from imgcls.models.zoo.registry import default_preprocess, describe_weights

    classes = tuple(f"imagenet_{i}" for i in range(1000))
    return ModelCard(arch=arch, base_weights=describe_weights(arch, weights), class_names=classes,
                     preprocess=default_preprocess(arch), train={"purpose": "imgcls models --benchmark"})


def _model(arch: str, weights: str):
    import torch

    from imgcls.models.zoo.registry import build, pretrained

    torch.manual_seed(0)
    return (pretrained(arch) if weights == "imagenet" else build(arch, 1000)).eval()


def _export(folder: Path, arch: str, weights: str, int8: bool, split: SplitListing) -> dict[str, Any]:
    from imgcls.export.config import DEFAULT_OPSET, INT8_FILENAME
    from imgcls.export.convert import save_onnx, to_onnx

    card = _card(arch, weights)
    save_onnx(to_onnx(_model(arch, weights), card.preprocess, opset=DEFAULT_OPSET), folder / "model.onnx")
    if not int8:
        return {}
    from imgcls.export.quantize import calibration_pixels, quantize_file, recipe_for

    recipe = recipe_for(_target(), arch)  # the export's own recipe for this CPU (imgcls.models.core.cpu)
    pixels = calibration_pixels(split, card, len(split.train))
    return quantize_file(folder / "model.onnx", folder / INT8_FILENAME, recipe, pixels)


def prepare(arch: str, cache: Path, int8: bool = True) -> BenchModels:
    """``arch`` as ``model.onnx`` (+ ``model.int8.onnx``) under ``cache/onnx``, exported unless cached."""
    from imgcls.export.config import INT8_FILENAME
    from imgcls.models.zoo.registry import entry_for

    source = entry_for(arch).weights
    weights = "imagenet" if source is not None and source.available_offline() else "none"
    recipe = _recipe(arch, weights, int8)
    folder = cache / "onnx" / f"{arch}-{weights}{'-int8' if int8 else ''}"
    started = time.perf_counter()
    try:
        cached = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        cached = None
    if cached is None or cached.get("recipe") != recipe:
        split = photo_split(cache) if int8 else None
        log.info("%s: exporting (%s weights)%s into %s", arch, weights, " + INT8" if int8 else "", folder)
        with staged_directory(folder) as staging:
            settings = _export(staging, arch, weights, int8, split)
            (staging / "recipe.json").write_text(json.dumps({"recipe": recipe, "int8_settings": settings}))
        cached = {"recipe": recipe, "int8_settings": settings}
        seconds = time.perf_counter() - started
    else:
        seconds = 0.0
    return BenchModels(arch, weights, folder / "model.onnx", folder / INT8_FILENAME if int8 else None,
                       dict(cached.get("int8_settings") or {}), seconds)
