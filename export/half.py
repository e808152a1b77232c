"""fp16 variant for GPU serving: weights and activations in float16, uint8 in / float32 logits out.

Uses ONNX Runtime's bundled float16 converter (``onnxruntime.transformers.float16``, the same code as
onnxconverter-common, which is not a dependency here). The file is checked with the same graph
contract and gated on top-1 accuracy against fp32 on the validation split (on CPU here; the
speed figure is CPU ONNX Runtime, which is not where fp16 pays off).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from imgcls.export.config import FP16_FILENAME, FP32_FILENAME, ExportConfig
from imgcls.export.convert import save_onnx
from imgcls.export.errors import ExportError
from imgcls.export.gate import keep_if_gate_passes
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing

log = logging.getLogger(__name__)


def to_fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(source))
    try:
        half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:  # the converter raises bare Exceptions / ValueErrors
        raise ExportError(f"fp16 conversion failed: {type(exc).__name__}: {exc}") from exc
    save_onnx(half, target)


def add_fp16(staging: Path, card: ModelCard, split: SplitListing, files: dict, config: ExportConfig,
             report: dict) -> tuple[ModelCard, dict]:
    fp32_path, fp16_path = staging / FP32_FILENAME, staging / FP16_FILENAME
    to_fp16(fp32_path, fp16_path)
    settings: dict[str, Any] = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}
    return keep_if_gate_passes(fp32_path, fp16_path, "fp16", settings, split, card, config, files, report)
