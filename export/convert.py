"""PyTorch -> ONNX: a graph that takes uint8 pixels, normalises inside, and returns raw logits."""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.export.errors import ConversionError
from imgcls.models.core.card import ModelCard
from imgcls.models.core.preprocess import Preprocess

log = logging.getLogger(__name__)

MAX_BATCH = 4096


class PixelsToLogits(nn.Module):
    """``uint8 [N,3,H,W]`` -> ``/255, -mean, /std`` -> the classifier -> ``float32 [N,C]`` logits."""

    def __init__(self, model: nn.Module, normalization: Preprocess) -> None:
        super().__init__()
        self.model = model
        # Same float32 arithmetic as Preprocess.normalize: (x / 255 - mean) / std.
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32) / 255.0
        return self.model((x - self.mean) / self.std)


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), None, dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixels": {0: batch}}, external_data=False, optimize=True, verbose=False,
        )
    if program is None:
        raise ConversionError("torch.onnx.export (dynamo) returned no program")
    return program.model_proto


def _export_legacy(wrapper: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def to_onnx(
    model: nn.Module, normalization: Preprocess, *, opset: int, exporter: str = "dynamo"
) -> onnx.ModelProto:
    """Convert ``model`` wrapped by ``PixelsToLogits``; the batch axis is dynamic."""
    wrapper = PixelsToLogits(model, normalization).eval()
    size = normalization.crop_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    try:
        with torch.no_grad():
            if exporter == "dynamo":
                proto = _export_dynamo(wrapper, example, opset)
            else:
                proto = _export_legacy(wrapper, example, opset)
    except ConversionError:
        raise
    except Exception as exc:  # the exporters raise a zoo of types; name the step and keep the cause
        raise ConversionError(f"{exporter} exporter failed at opset {opset}: {type(exc).__name__}: {exc}") from exc
    return proto


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
