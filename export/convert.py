"""PyTorch -> ONNX: a graph that takes uint8 pixels, normalises inside, and returns raw logits."""
from __future__ import annotations

import logging
from pathlib import Path

import onnx
from torch import nn

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.export.errors import ConversionError
from imgcls.models.core.card import ModelCard
from imgcls.models.core.preprocess import Preprocess
from imgcls.models.training.onnx_graph import pixels_graph

log = logging.getLogger(__name__)


def to_onnx(
    model: nn.Module, normalization: Preprocess, *, opset: int, exporter: str = "dynamo"
) -> onnx.ModelProto:
    """Convert ``model`` wrapped by ``onnx_graph.PixelsToLogits``; the batch axis is dynamic."""
    try:
        return pixels_graph(model, normalization, opset=opset, exporter=exporter, names=(INPUT_NAME, OUTPUT_NAME))
    except Exception as exc:  # the exporters raise a zoo of types; name the step and keep the cause
        raise ConversionError(f"{exporter} exporter failed at opset {opset}: {type(exc).__name__}: {exc}") from exc


def embed_card(proto: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Replace the model's metadata_props with the card (and keep a producer note)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, card.to_metadata_props())
    proto.doc_string = f"imgcls {card.arch} classifier, {card.num_classes} classes; input uint8 pixels NCHW"
    return proto


def save_onnx(proto: onnx.ModelProto, path: Path) -> int:
    """Write one self-contained ``.onnx`` file (no external data); returns its size in bytes."""
    data = proto.SerializeToString()
    if len(data) >= 2**31:
        raise ConversionError(f"{path.name}: {len(data)} bytes exceeds the 2 GB single-file limit")
    path.write_bytes(data)
    return len(data)
