"""Stock ImageNet bundles: ``imgcls export --pretrained ARCH [--weights imagenet|FILE] [--data DIR]``.

A pretrained model is staged as a run directory (``checkpoint/`` + ``split.json``) in a scratch
folder, so conversion, parity, INT8 and fp16 are the very code of a fine-tuned export:

- the card lists the weights' own 1000 ImageNet class names, in logit order (their metadata);
- without ``--data``, the images are reference photos that ship with scikit-image
  (``skimage.data``: a cat, a cup of coffee, a rocket, an astronaut...), each also flipped and
  cropped: parity runs on the photos, INT8 is calibrated on all variants, and the INT8 gate
  measures top-1 *agreement with the PyTorch model* on them (the label of each image is the fp32
  model's own top-1, recorded as ``label_source``): there is no labelled ImageNet data offline,
  so the gate refuses INT8 when it changes the answer on more than ``--max-accuracy-drop`` points
  of the images. No temperature is fitted (there are no labels).
- with ``--data DIR`` (an ImageFolder whose folder names are ImageNet class names of the weights,
  any subset), those labelled images are used for parity, INT8 calibration and a real-accuracy
  gate, and temperature scaling is fitted on them and recorded in the card.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from imgcls.export.errors import ExportError
from imgcls.export.images import load_pixels
from imgcls.export.validate import torch_reference
from imgcls.models.core.calibration import fit_calibration
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import DatasetError, Sample, SplitListing, scan_image_folder

log = logging.getLogger(__name__)

# skimage.data images stored in the package (no download); photos first, then textures/scans.
REFERENCE_PHOTOS = (
    "chelsea", "coffee", "rocket", "astronaut", "stereo_motorcycle", "camera", "clock", "coins", "horse",
    "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "page", "brick", "grass", "gravel", "moon",
)
VARIANTS = ("full", "flip", "crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_centre")
LOGIT_BATCH = 32  # images per PyTorch forward pass (bounded memory for large --data folders)
PSEUDO_LABELS = "the fp32 PyTorch model's own top-1 (no labelled ImageNet data offline)"


@dataclass(frozen=True)
class StagedRun:
    run_dir: Path
    card: ModelCard
    images: str  # what the parity/INT8 images are, for the report


def reference_photo(name: str) -> Image.Image:
    """One ``skimage.data`` image as an RGB PIL image."""
    import skimage.data

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo pairs: the left view
        array = array[0]
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _variant(image: Image.Image, kind: str) -> Image.Image:
    if kind == "full":
        return image
    if kind == "flip":
        return ImageOps.mirror(image)
    w, h = image.size
    cw, ch = int(w * 0.7), int(h * 0.7)
    if kind == "crop_centre":
        cw, ch = int(w * 0.6), int(h * 0.6)
        left, top = (w - cw) // 2, (h - ch) // 2
    else:
        left = 0 if kind.endswith("l") else w - cw
        top = 0 if kind[-2] == "t" else h - ch
    return image.crop((left, top, left + cw, top + ch))


def write_reference_photos(root: Path) -> list[str]:
    """``root/<photo>_<variant>.png`` for every reference photo and variant; returns relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in REFERENCE_PHOTOS:
        image = reference_photo(name)
        for kind in VARIANTS:
            relative = f"{name}_{kind}.png"
            _variant(image, kind).save(root / relative, format="PNG", compress_level=1)
            paths.append(relative)
    return paths


def imagenet_card(arch: str, weights: str) -> ModelCard:
    from imgcls.models.zoo.registry import default_preprocess, describe_weights, entry_for

    source = entry_for(arch).weights
    if source is None:
        raise ExportError(f"{arch} has no ImageNet weights in the zoo, so it has no ImageNet class names")
    names = tuple(source.categories())
    if len(names) != 1000 or len(set(names)) != len(names):
        raise ExportError(f"{arch}: the weights' metadata lists {len(names)} categories "
                          f"({len(set(names))} distinct); expected 1000 distinct ImageNet classes")
    return ModelCard(
        arch=arch, base_weights=describe_weights(arch, weights), class_names=names,
        preprocess=default_preprocess(arch),
        train={"source": "pretrained", "weights": weights if weights == "imagenet" else Path(weights).name,
               "fine_tuned": False, "class_names_from": _categories_origin(source)},
        metrics={"published": {k: v for k, v in source.meta().items()
                               if k in ("_metrics", "num_params", "_ops", "recipe")}} if source.meta() else {},
    )


def _categories_origin(source: Any) -> str:
    """Whose metadata the class names were read from (lite0's package borrows torchvision's list)."""
    borrowed = getattr(source, "categories_from", None)
    return f"torchvision {borrowed} metadata" if borrowed is not None else f"{source.describe()} metadata"


def labelled_split(data_dir: Path, class_names: tuple[str, ...]) -> SplitListing:
    """Every image of ``data_dir/<ImageNet class name>/`` as both train (INT8 calibration) and val."""
    try:
        folders, files = scan_image_folder(data_dir)
    except DatasetError as exc:
        raise ExportError(f"--data {data_dir}: {exc}") from exc
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ExportError(
            f"--data {data_dir}: folder(s) {unknown[:5]} are not ImageNet class names of these weights "
            f"(e.g. {class_names[281]!r}, {class_names[967]!r}; see card.class_names)")
    root = Path(data_dir).resolve()
    samples = tuple(Sample(path.resolve().relative_to(root).as_posix(), index[folder])
                    for folder in folders for path in files[folder])
    return SplitListing(str(root), class_names, samples, samples, "pretrained-labelled", 0, 1.0)


def photo_split(root: Path, class_names: tuple[str, ...], labels_of: Callable[[SplitListing], np.ndarray]) -> SplitListing:
    """The reference photos, labelled with the model's own top-1 (see the module docstring)."""
    paths = write_reference_photos(root)
    unlabelled = SplitListing(str(root.resolve()), class_names, tuple(Sample(p, 0) for p in paths), (),
                              "reference-photos", 0, 0.0)
    labels = labels_of(unlabelled)
    samples = tuple(Sample(p, int(label)) for p, label in zip(paths, labels))
    val = tuple(s for s in samples if s.path.endswith("_full.png")) + \
        tuple(s for s in samples if not s.path.endswith("_full.png"))  # parity checks the untouched photos first
    return SplitListing(str(root.resolve()), class_names, samples, val, "reference-photos", 0, 1.0)


def stage_pretrained(arch: str, weights: str, scratch: Path, data_dir: Path | None) -> StagedRun:
    """Write ``scratch/run/{checkpoint/, split.json}`` for the stock model; see the module docstring."""
    from imgcls.models.training.checkpoint import save_checkpoint
    from imgcls.models.zoo.registry import UnknownArchError, pretrained
    from imgcls.models.zoo.weights import WeightsError

    try:
        card = imagenet_card(arch, weights)
        model = pretrained(arch, weights).eval()
    except (UnknownArchError, WeightsError, OSError) as exc:
        raise ExportError(f"--pretrained {arch}: {exc}") from exc

    def logits_of(split: SplitListing, samples) -> tuple[np.ndarray, np.ndarray]:
        chosen = load_pixels(split, samples, card.preprocess)
        if len(chosen.labels) == 0:
            raise ExportError(f"no readable images under {split.root}")
        logits = [torch_reference(model, card.preprocess, chosen.pixels[i:i + LOGIT_BATCH])
                  for i in range(0, len(chosen.pixels), LOGIT_BATCH)]
        return np.concatenate(logits).astype(np.float64), chosen.labels

    if data_dir is None:
        split = photo_split(scratch / "photos", card.class_names, lambda s: logits_of(s, s.train)[0].argmax(1))
        card = card.updated(train={"images": f"{len(REFERENCE_PHOTOS)} skimage.data reference photos x "
                                             f"{len(VARIANTS)} variants", "gate_labels": PSEUDO_LABELS})
        images = card.train["images"]
    else:
        split = labelled_split(Path(data_dir), card.class_names)
        logits, labels = logits_of(split, split.val)
        images = f"{len(labels)} labelled images under {Path(data_dir).name}"
        card = card.updated(train={"images": images, "gate_labels": "the folder names (ImageNet classes)"},
                            calibration=fit_calibration(logits, labels, images))
        log.info("calibration on %s: temperature %.4f, ECE %.4f -> %.4f", images, card.temperature,
                 card.calibration["ece_before"], card.calibration["ece_after"])
    run_dir = scratch / "run"
    card = card.updated(lineage={"dataset_sha256": split.sha256()})
    save_checkpoint(run_dir / "checkpoint", model, card)
    split.save(run_dir)
    return StagedRun(run_dir, card, images)


def describe_source(staged: StagedRun, arch: str, weights: str) -> dict[str, Any]:
    return {"pretrained": arch, "weights": weights, "images": staged.images}
