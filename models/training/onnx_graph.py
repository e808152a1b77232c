"""The graph a bundle contains: uint8 NCHW pixels -> normalised inside -> the network -> float32.

One implementation for both users: ``imgcls export`` converts the whole classifier with it
(``imgcls.export.convert``), and ``imgcls train --strategy head`` converts the frozen backbone
(the classifier replaced by ``nn.Identity``) to compute its cached features with ONNX Runtime
(``imgcls.models.training.ort_features``), so those features are the ones the exported model computes.
"""
from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from imgcls.models.core.preprocess import Preprocess

MAX_BATCH = 4096
BUNDLE_OPSET = 18  # imgcls export's default opset (imgcls.export.config.DEFAULT_OPSET; a test keeps them equal)


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


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, opset: int, names: tuple[str, str]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), None, dynamo=True, opset_version=opset,
            input_names=[names[0]], output_names=[names[1]],
            dynamic_shapes={"pixels": {0: batch}}, external_data=False, optimize=True, verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export (dynamo) returned no program")
    return program.model_proto


def _export_legacy(wrapper: nn.Module, example: torch.Tensor, opset: int, names: tuple[str, str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[names[0]], output_names=[names[1]],
            dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def pixels_graph(model: nn.Module, normalization: Preprocess, *, opset: int, exporter: str,
                 names: tuple[str, str]) -> onnx.ModelProto:
    """``model`` wrapped by ``PixelsToLogits`` as ONNX (input, output named ``names``; dynamic batch).

    Raises whatever the exporter raises (callers name the step)."""
    wrapper = PixelsToLogits(model, normalization).eval()
    size = normalization.crop_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        if exporter == "dynamo":
            return _export_dynamo(wrapper, example, opset, names)
        return _export_legacy(wrapper, example, opset, names)
