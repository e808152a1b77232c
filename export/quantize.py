"""INT8: ONNX Runtime static QDQ quantization calibrated on the run's training images, then the gate.

Per target: ``x86`` (AVX2 without VNNI, the default) uses U8 activations / S8 weights with
``reduce_range`` (plain S8S8 saturates there); ``vnni`` and ``arm64`` use S8S8. ViT gets dynamic
quantization of its MatMuls only (static QDQ on attention and dynamic quantization of convolutions
both lose here).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.export.config import INPUT_NAME, INT8_FILENAME, ExportConfig
from imgcls.export.errors import CalibrationError
from imgcls.export.gate import keep_if_gate_passes
from imgcls.export.images import load_pixels
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing

log = logging.getLogger(__name__)

DYNAMIC_MATMUL_ARCHS = frozenset({"vit_b_16"})
CALIBRATION_BATCH = 8


def target_types(target: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if target == "x86":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "reduce_range": True}
    return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8, "reduce_range": False}


def _calibration_reader(pixels: np.ndarray, progress: bool):
    from onnxruntime.quantization import CalibrationDataReader
    from tqdm import tqdm

    class PixelBatches(CalibrationDataReader):
        """Yields ``{"pixels": uint8 [B,3,H,W]}`` batches of real, preprocessed training images."""

        def __init__(self) -> None:
            # Equal batches: ORT's histogram calibrators (entropy, percentile) stack them.
            self.batch = max(b for b in range(1, CALIBRATION_BATCH + 1) if len(pixels) % b == 0)
            starts = range(0, len(pixels), self.batch)
            self._batches = iter(tqdm(starts, desc="int8: calibrate", unit="batch", disable=not progress, leave=False))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            return None if start is None else {INPUT_NAME: pixels[start:start + self.batch]}

    return PixelBatches()


def calibration_pixels(split: SplitListing, card: ModelCard, size: int) -> np.ndarray:
    """Up to ``size`` training images spread evenly over the (class-sorted) training list."""
    train = list(split.train)
    if not train:
        raise CalibrationError(f"{split.root}: the split lists no training images to calibrate INT8 with")
    step = max(1, len(train) // size)
    chosen = load_pixels(split, train[::step], card.preprocess, size)
    if len(chosen.labels) == 0:
        raise CalibrationError(f"{split.root}: none of the training images could be read for calibration")
    return chosen.pixels


def quantize_file(source: Path, target: Path, card: ModelCard, split: SplitListing, config: ExportConfig) -> dict[str, Any]:
    """Write ``target`` (QDQ, per-channel) from ``source``; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        excluded = list(config.exclude_nodes) or None
        if card.arch in DYNAMIC_MATMUL_ARCHS:
            quantize_dynamic(str(prepared), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=target_types(config.int8_target)["weight_type"], nodes_to_exclude=excluded)
            return {"mode": "dynamic", "op_types": ["MatMul"], "per_channel": True, "target": config.int8_target,
                    "pre_process": True, "exclude_nodes": list(config.exclude_nodes)}
        pixels = calibration_pixels(split, card, config.calibration_size)
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        types = target_types(config.int8_target)
        with contextlib.redirect_stdout(sys.stderr):  # ORT prints calibration chatter to stdout
            quantize_static(
                str(prepared), str(target), _calibration_reader(pixels, config.progress),
                quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=methods[config.calibration_method],
                nodes_to_exclude=excluded, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                **types,
            )
    return {
        "mode": "static", "format": "QDQ", "per_channel": True, "pre_process": True, "target": config.int8_target,
        "activation_type": types["activation_type"].name, "weight_type": types["weight_type"].name,
        "reduce_range": types["reduce_range"], "calibration_method": config.calibration_method,
        "calibration_images": int(len(pixels)), "calibration_source": "split.json train",
        "exclude_nodes": list(config.exclude_nodes),
    }


def add_int8(staging: Path, card: ModelCard, split: SplitListing, files: dict, config: ExportConfig,
             report: dict) -> tuple[ModelCard, dict]:
    """Quantize, validate the graph contract, gate; keep the file only if the gate passes."""
    fp32_path, int8_path = staging / "model.onnx", staging / INT8_FILENAME
    settings = quantize_file(fp32_path, int8_path, card, split, config)
    return keep_if_gate_passes(fp32_path, int8_path, "int8", settings, split, card, config, files, report)
