"""INT8: ONNX Runtime static QDQ quantization calibrated on the run's training images.

A ``Recipe`` says how one INT8 file is made (types per target, per-channel, calibration, nodes kept
in float). Per target (see ``imgcls.models.core.cpu``): ``x86`` (AVX2 without VNNI) uses U8 activations
and U8 weights, because ORT's U8S8 kernels saturate int16 pair sums there (``reduce_range`` halves
the weight resolution to avoid it and loses accuracy: 53.9 % vs U8U8 84.7 % on the issue-12 model).
``vnni`` uses U8U8 too: measured on an AVX-512 VNNI machine, efficientnet_lite0 on the digits, U8U8
93.0 % vs U8S8 89.7 % vs S8S8 89.7 % (fp32 96.4 %), the same with ORT's kernels and simulated in
float. ``arm64`` uses S8S8 (ORT's recommended ARM setting; not measured here: no ARM machine).
ViT gets dynamic quantization of its MatMuls only.
``imgcls.export.int8_search`` decides which recipes to try and gates them.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.export.config import INPUT_NAME
from imgcls.export.errors import CalibrationError
from imgcls.export.images import LabelledPixels, load_pixels
from imgcls.models.core.card import ModelCard
from imgcls.models.core.progress import track
from imgcls.models.core.dataset import SplitListing

log = logging.getLogger(__name__)

DYNAMIC_MATMUL_ARCHS = frozenset({"vit_b_16"})
CALIBRATION_BATCH = 8
# (activation type, weight type, reduce_range) per target; see the module docstring.
TARGET_TYPES = {
    "x86": ("QUInt8", "QUInt8", False),
    "vnni": ("QUInt8", "QUInt8", False),
    "arm64": ("QInt8", "QInt8", False),
}

# The fast format per target, tried first (with the retrained head) where the integer kernels
# accumulate u8*s8 products in int32 without saturating: VNNI (``vpdpbusd``). U8S8 alone lost
# accuracy there (89.7 % vs U8U8 93.0 %, see above); the retrained head is what makes it pass.
FAST_TYPES = {"vnni": ("QUInt8", "QInt8", False)}


@dataclass(frozen=True)
class Recipe:
    """How one INT8 file is made."""

    target: str
    activation_type: str
    weight_type: str
    reduce_range: bool
    per_channel: bool = True
    calibration_method: str = "minmax"
    exclude_nodes: tuple[str, ...] = field(default_factory=tuple)
    dynamic_matmul: bool = False

    def excluding(self, nodes: tuple[str, ...]) -> "Recipe":
        return replace(self, exclude_nodes=tuple(dict.fromkeys(self.exclude_nodes + tuple(nodes))))

    def settings(self) -> dict[str, Any]:
        data = asdict(self)
        data["exclude_nodes"] = list(self.exclude_nodes)
        return data


def recipe_for(target: str, arch: str, calibration_method: str = "minmax",
               exclude_nodes: tuple[str, ...] = ()) -> Recipe:
    activation, weight, reduce_range = TARGET_TYPES[target]
    return Recipe(target, activation, weight, reduce_range, True, calibration_method, tuple(exclude_nodes),
                  arch in DYNAMIC_MATMUL_ARCHS)


def fast_recipe_for(target: str, arch: str, calibration_method: str = "minmax",
                    exclude_nodes: tuple[str, ...] = ()) -> Recipe | None:
    """The target's fast format (``FAST_TYPES``), or None where the accurate one is also the fast one."""
    if target not in FAST_TYPES or arch in DYNAMIC_MATMUL_ARCHS:
        return None
    activation, weight, reduce_range = FAST_TYPES[target]
    return Recipe(target, activation, weight, reduce_range, True, calibration_method, tuple(exclude_nodes))


def _calibration_reader(pixels: np.ndarray, progress: bool):
    from onnxruntime.quantization import CalibrationDataReader

    class PixelBatches(CalibrationDataReader):
        """Yields ``{"pixels": uint8 [B,3,H,W]}`` batches of real, preprocessed training images."""

        def __init__(self) -> None:
            # Equal batches: ORT's histogram calibrators (entropy, percentile) stack them.
            self.batch = max(b for b in range(1, CALIBRATION_BATCH + 1) if len(pixels) % b == 0)
            starts = range(0, len(pixels), self.batch)
            self._batches = iter(track(starts, "int8: calibrate", len(pixels), enabled=progress,
                                       count=lambda start: len(pixels[start:start + self.batch])))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            return None if start is None else {INPUT_NAME: pixels[start:start + self.batch]}

    return PixelBatches()


def calibration_images(split: SplitListing, card: ModelCard, size: int) -> LabelledPixels:
    """Up to ``size`` training images spread evenly over the (class-sorted) training list."""
    train = list(split.train)
    if not train:
        raise CalibrationError(f"{split.root}: the split lists no training images to calibrate INT8 with")
    step = max(1, len(train) // size)
    chosen = load_pixels(split, train[::step], card.preprocess, size)
    if len(chosen.labels) == 0:
        raise CalibrationError(f"{split.root}: none of the training images could be read for calibration")
    return chosen


def calibration_pixels(split: SplitListing, card: ModelCard, size: int) -> np.ndarray:
    """The pixels of ``calibration_images``."""
    return calibration_images(split, card, size).pixels


def prepare(source: Path, target: Path) -> None:
    """ORT's pre-processing (shape inference, graph optimisation: Conv+BN folding) before quantization."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target))


class _BiasScaleNotes(logging.Filter):
    """Collapses ORT's per-tensor "Quantized bias ... exceeds the range of a int32" warnings (one per
    affected Conv: ORT clips those biases; it widens the weight scale instead only for int8 weights)
    into one summary line. Measured on the demo's efficientnet_lite0 (U8U8, 83 channels, nearly-dead
    ones whose weights are ~0 after BatchNorm folding): repairing them changed no logit."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exceeds the range of a int32" in message:
            self.tensors.append(message.split("`")[1] if message.count("`") >= 2 else message)
            return False
        return True


@contextlib.contextmanager
def _bias_scale_summary() -> Any:
    notes = _BiasScaleNotes()
    root = logging.getLogger()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)
        if notes.tensors:
            log.info("int8: ORT clipped %d biases to the int32 range of their scale (input scale x weight scale; "
                     "first: %s)", len(notes.tensors), notes.tensors[0])


def quantize_prepared(prepared: Path, target: Path, recipe: Recipe, pixels: np.ndarray,
                      progress: bool = False, cache: Path | None = None) -> dict[str, Any]:
    """Write ``target`` from an already ``prepare``-d graph; returns the settings used.

    ``cache``: ORT's calibration cache (tensor ranges, JSON); the first call calibrates and writes
    it, later calls with the same graph and calibration method reuse the ranges.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    excluded = list(recipe.exclude_nodes) or None
    if recipe.dynamic_matmul:
        quantize_dynamic(str(prepared), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType[recipe.weight_type], nodes_to_exclude=excluded)
        return {"mode": "dynamic", "op_types": ["MatMul"], "pre_process": True, **recipe.settings()}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with contextlib.redirect_stdout(sys.stderr), _bias_scale_summary():  # ORT prints calibration chatter to stdout
        quantize_static(
            str(prepared), str(target), _calibration_reader(pixels, progress),
            quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel,
            calibrate_method=methods[recipe.calibration_method], nodes_to_exclude=excluded,
            activation_type=QuantType[recipe.activation_type], weight_type=QuantType[recipe.weight_type],
            reduce_range=recipe.reduce_range, calibration_cache_path=cache,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return {"mode": "static", "format": "QDQ", "pre_process": True, "calibration_images": int(len(pixels)),
            "calibration_source": "split.json train", **recipe.settings()}


def quantize_file(source: Path, target: Path, recipe: Recipe, pixels: np.ndarray,
                  progress: bool = False) -> dict[str, Any]:
    """``prepare`` then ``quantize_prepared`` (one-off use; the search prepares once)."""
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        prepare(source, prepared)
        return quantize_prepared(prepared, target, recipe, pixels, progress)
