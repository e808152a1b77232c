"""Stock ImageNet bundles: ``imgcls export --pretrained ARCH [--weights imagenet|FILE] [--data DIR]``.

A pretrained model is staged as a run directory (``checkpoint/`` + ``split.json``) in a scratch
folder, so conversion, parity, INT8 and fp16 are the very code of a fine-tuned export:

- the card lists the weights' own 1000 ImageNet class names, in logit order (their metadata);
- without ``--data``, the images are reference photos that ship with scikit-image
  (``skimage.data``: a cat, a cup of coffee, a rocket, an astronaut...), each also flipped and
  cropped, split by photo into two disjoint halves (``FIT_PHOTOS``, ``GATE_PHOTOS``): INT8 is
  calibrated (and anything else is fitted) on the first half's variants, and the INT8 gate
  measures top-1 *agreement with the PyTorch model* on the second half's (the label of each image
  is the fp32 model's own top-1, recorded as ``gate_labels``): there is no labelled ImageNet data
  offline, so the gate refuses INT8 when it changes the answer on more than
  ``--max-accuracy-drop`` points of the held-out images. No temperature is fitted (there are no
  labels): the scores are the model's own softmax.
- with ``--data DIR`` (an ImageFolder whose folder names are ImageNet class names of the weights,
  any subset; or ``DIR/train`` + ``DIR/val``), the labelled images are split per class into two
  halves (``make_split``): temperature scaling is fitted and INT8 calibrated on one, the gate and
  the held-out calibration figures use the other.
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from imgcls.export.errors import UsageError
from imgcls.export.images import LabelledPixels, image_set, load_pixels
from imgcls.export.validate import torch_reference
from imgcls.models.core.calibration import calibration_figures, fit_calibration
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import DatasetError, Sample, SplitListing, make_split

log = logging.getLogger(__name__)

# skimage.data images stored in the package (no download); photos first, then textures/scans.
REFERENCE_PHOTOS = (
    "chelsea", "coffee", "rocket", "astronaut", "stereo_motorcycle", "camera", "clock", "coins", "horse",
    "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "page", "brick", "grass", "gravel", "moon",
)
FIT_PHOTOS, GATE_PHOTOS = REFERENCE_PHOTOS[0::2], REFERENCE_PHOTOS[1::2]  # disjoint: no photo in both
VARIANTS = ("full", "flip", "crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_centre")
LOGIT_BATCH = 32  # images per PyTorch forward pass (bounded memory for large --data folders)
DATA_VAL_FRACTION = 0.5  # --data: the half of each class's images the gate grades on
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
        raise UsageError(f"--pretrained {arch}: {arch} has no ImageNet weights in the zoo, so it has no ImageNet "
                         "class names; choose an architecture with ImageNet weights (imgcls models)")
    names = tuple(source.categories())
    if len(names) != 1000 or len(set(names)) != len(names):
        raise UsageError(f"{arch}: the weights' metadata lists {len(names)} categories "
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
    """``data_dir``'s labelled images, split per class into fitting (train) and gate (val) halves,
    labelled with the weights' ImageNet indices."""
    try:
        folders = make_split(data_dir, val_fraction=DATA_VAL_FRACTION)
    except DatasetError as exc:
        raise UsageError(f"--data {data_dir}: {exc} (one half of each class's images is fitted on, "
                         "the other graded on)") from exc
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [f for f in folders.class_names if f not in index]
    if unknown:
        raise UsageError(
            f"--data {data_dir}: folder(s) {unknown[:5]} are not ImageNet class names of these weights "
            f"(e.g. {class_names[281]!r}, {class_names[967]!r}; see card.class_names)")

    def relabel(samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
        return tuple(Sample(s.path, index[folders.class_names[s.label]]) for s in samples)

    return SplitListing(folders.root, class_names, relabel(folders.train), relabel(folders.val),
                        "pretrained-labelled", folders.seed, DATA_VAL_FRACTION)


def photo_split(root: Path, class_names: tuple[str, ...], labels_of: Callable[[SplitListing], np.ndarray]) -> SplitListing:
    """The reference photos, labelled with the model's own top-1 (see the module docstring): the
    variants of ``FIT_PHOTOS`` as ``train``, those of ``GATE_PHOTOS`` as ``val`` (originals first)."""
    paths = write_reference_photos(root)
    unlabelled = SplitListing(str(root.resolve()), class_names, tuple(Sample(p, 0) for p in paths), (),
                              "reference-photos", 0, 0.0)
    labels = labels_of(unlabelled)
    samples = tuple(Sample(p, int(label)) for p, label in zip(paths, labels))

    def of(photos: tuple[str, ...]) -> tuple[Sample, ...]:
        return tuple(s for s in samples if _photo(s.path) in photos)

    gate = of(GATE_PHOTOS)
    val = tuple(s for s in gate if s.path.endswith("_full.png")) + \
        tuple(s for s in gate if not s.path.endswith("_full.png"))  # parity checks the untouched photos first
    return SplitListing(str(root.resolve()), class_names, of(FIT_PHOTOS), val, "reference-photos", 0,
                        len(GATE_PHOTOS) / len(REFERENCE_PHOTOS))


def _photo(path: str) -> str:
    """``stereo_motorcycle_crop_tl.png`` -> ``stereo_motorcycle``."""
    stem = path.removesuffix(".png")
    return next(stem.removesuffix(f"_{kind}") for kind in VARIANTS if stem.endswith(f"_{kind}"))


def check_source(arch: str, weights: str) -> None:
    """``UsageError`` for an architecture the zoo lacks (naming close matches), one without ImageNet
    weights, or ``--weights`` that is neither ``imagenet`` nor an existing file."""
    from imgcls.models.zoo.registry import ZOO

    if arch not in ZOO:
        close = difflib.get_close_matches(arch, list(ZOO), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(f"--pretrained {arch}: unknown architecture; {hint}choose one of: {', '.join(sorted(ZOO))}")
    if ZOO[arch].weights is None:
        imagenet_card(arch, weights)  # raises, naming the missing weights
    if weights != "imagenet" and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: no such file; give imagenet (the zoo's weights) or a local "
                         f"state dict file of {arch} with its 1000-class head")


def _export_advice(message: str) -> str:
    """The zoo's offline message, minus advice that only fits training (``--weights none``)."""
    return re.sub(r",?\s*or --weights none\b", "", message)


def _logits(model: Any, card: ModelCard, split: SplitListing, samples: Any) -> tuple[np.ndarray, LabelledPixels]:
    chosen = load_pixels(split, samples, card.preprocess)
    if len(chosen.labels) == 0:
        raise UsageError(f"no readable images under {split.root}")
    logits = [torch_reference(model, card.preprocess, chosen.pixels[i:i + LOGIT_BATCH])
              for i in range(0, len(chosen.pixels), LOGIT_BATCH)]
    return np.concatenate(logits).astype(np.float64), chosen


def held_out_calibration(model: Any, card: ModelCard, split: SplitListing, images: str) -> dict[str, Any]:
    """Temperature fitted on ``split.train``, its figures measured again on ``split.val`` (``held_out``)."""
    logits, fitted = _logits(model, card, split, split.train)
    section = fit_calibration(logits, fitted.labels, f"{images}: the fitting half")
    section.update(image_set(fitted.paths, split, "calibrated the temperature"))
    logits, graded = _logits(model, card, split, split.val)
    figures = calibration_figures(logits, graded.labels, section["temperature"])
    section["held_out"] = {**image_set(graded.paths), **{k: round(v, 6) for k, v in figures.items()}}
    log.info("calibration on %s: temperature %.4f; on the %d held-out images ECE %.4f -> %.4f", images,
             section["temperature"], len(graded.labels), figures["ece_before"], figures["ece_after"])
    return section


def stage_pretrained(arch: str, weights: str, scratch: Path, data_dir: Path | None) -> StagedRun:
    """Write ``scratch/run/{checkpoint/, split.json}`` for the stock model; see the module docstring."""
    from imgcls.models.training.checkpoint import save_checkpoint
    from imgcls.models.zoo.registry import pretrained
    from imgcls.models.zoo.weights import WeightsError

    check_source(arch, weights)
    try:
        card = imagenet_card(arch, weights)
        model = pretrained(arch, weights).eval()
    except (WeightsError, OSError) as exc:
        raise UsageError(f"--pretrained {arch}: {_export_advice(str(exc))}") from exc

    if data_dir is None:
        split = photo_split(scratch / "photos", card.class_names, lambda s: _logits(model, card, s, s.train)[0].argmax(1))
        images = f"{len(REFERENCE_PHOTOS)} skimage.data reference photos x {len(VARIANTS)} variants"
        card = card.updated(train={"images": images, "gate_labels": PSEUDO_LABELS,
                                   "fit_photos": list(FIT_PHOTOS), "gate_photos": list(GATE_PHOTOS)})
    else:
        split = labelled_split(Path(data_dir), card.class_names)
        images = f"{len(split.train) + len(split.val)} labelled images under {Path(data_dir).name}"
        card = card.updated(train={"images": images, "gate_labels": "the folder names (ImageNet classes)"},
                            calibration=held_out_calibration(model, card, split, images))
    run_dir = scratch / "run"
    card = card.updated(lineage={"dataset_sha256": split.sha256()})
    save_checkpoint(run_dir / "checkpoint", model, card)
    split.save(run_dir)
    return StagedRun(run_dir, card, images)


def describe_source(staged: StagedRun, arch: str, weights: str) -> dict[str, Any]:
    return {"pretrained": arch, "weights": weights, "images": staged.images}
