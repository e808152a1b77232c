"""``model.onnx`` from the backbone graph training already converted, plus the classifier as one Gemm.

``imgcls train --strategy head`` converts the frozen backbone for feature caching and keeps that
graph in the run (``imgcls.models.training.backbone_graph``). When the checkpoint's backbone is
byte for byte the one that graph was converted from (sha256 of its state dict, BatchNorm buffers
included), with the same architecture, preprocessing, opset, exporter and torch version, and the
classifier is a plain ``nn.Linear`` (the last layer of every zoo architecture), the classifier is
appended as ``Gemm(features, W, b, transB=1)``: the graph the whole-model conversion would give, in
a fraction of a second instead of a conversion. Otherwise the whole model is converted. The
parity check against PyTorch guards the result either way.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper
from torch import nn

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME, ExportConfig
from imgcls.export.convert import to_onnx
from imgcls.models.core.card import ModelCard
from imgcls.models.training import backbone_graph
from imgcls.models.training.feature_cache import CACHE_DIRNAME, feature_extractor, main_head, state_digest
from imgcls.models.training.ort_features import INPUT_NAME as SAVED_INPUT, OUTPUT_NAME as SAVED_OUTPUT
from imgcls.models.zoo.registry import entry_for

log = logging.getLogger(__name__)

REUSED = "backbone graph from training + head"
FULL = "full conversion"


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 0
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def with_head(backbone: onnx.ModelProto, head: nn.Linear, head_name: str) -> onnx.ModelProto:
    """``backbone`` (input ``SAVED_INPUT`` -> ``[batch, F]`` output ``SAVED_OUTPUT``) with ``head`` appended:
    input renamed ``INPUT_NAME``, output ``OUTPUT_NAME`` = ``[batch, classes]``. Raises ValueError when the
    backbone's output is not ``[batch, head.in_features]``."""
    graph = backbone.graph
    features = graph.output[0]
    dims = features.type.tensor_type.shape.dim
    if len(dims) != 2 or dims[1].dim_value != head.in_features or dims[0].dim_value:
        raise ValueError(f"backbone output {features.name} is not [batch, {head.in_features}]")
    batch = dims[0].dim_param or "batch"
    if SAVED_INPUT != INPUT_NAME:
        for node in graph.node:
            node.input[:] = [INPUT_NAME if name == SAVED_INPUT else name for name in node.input]
        graph.input[0].name = INPUT_NAME
    taken = {init.name for init in graph.initializer} | {o for n in graph.node for o in n.output} | {INPUT_NAME}
    # named as the whole-model conversion names them (PixelsToLogits.model.<head>, node_linear)
    weight, bias = _unique(f"model.{head_name}.weight", taken), _unique(f"model.{head_name}.bias", taken)
    graph.initializer.extend([numpy_helper.from_array(head.weight.detach().float().cpu().numpy(), weight),
                              numpy_helper.from_array(head.bias.detach().float().cpu().numpy(), bias)])
    graph.node.append(onnx.helper.make_node("Gemm", [features.name, weight, bias], [OUTPUT_NAME],
                                            name=_unique("node_linear", {n.name for n in graph.node}),
                                            transB=1))
    graph.value_info.append(features)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                                           [batch, head.out_features]))
    return backbone


def _reusable(run_dir: Path, model: nn.Module, card: ModelCard, config: ExportConfig
              ) -> tuple[onnx.ModelProto | None, str]:
    """(model.onnx built from the run's backbone graph, "") or (None, why it cannot be)."""
    head_name = entry_for(card.arch).head
    head = main_head(model, card.arch)
    if type(head) is not nn.Linear:
        return None, f"the classifier {head_name} is a {type(head).__name__}, not a plain Linear"
    digest = state_digest(feature_extractor(model, card.arch))
    expected = backbone_graph.identity(digest, card.arch, card.preprocess, opset=config.opset,
                                       exporter=config.exporter, names=(SAVED_INPUT, SAVED_OUTPUT))
    backbone, why = backbone_graph.load(run_dir / CACHE_DIRNAME / backbone_graph.FILENAME, expected)
    if backbone is None:
        return None, why
    try:
        return with_head(backbone, head, head_name), ""
    except ValueError as exc:
        return None, str(exc)


def convert(run_dir: Path, model: nn.Module, card: ModelCard, config: ExportConfig, reuse_failed: str | None = None
            ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """(model.onnx, the report's ``convert`` entry): the run's backbone graph + head when it matches (and
    ``reuse_failed`` does not say why a graph built so failed its checks), else the whole model converted."""
    started = time.perf_counter()
    proto, why = (None, reuse_failed) if reuse_failed else _reusable(run_dir, model, card, config)
    if proto is not None:
        seconds = time.perf_counter() - started
        log.info("convert: reused the backbone graph from training (+ head), %.1f s", seconds)
        return proto, {"source": REUSED, "seconds": round(seconds, 3)}
    proto = to_onnx(model, card.preprocess, opset=config.opset, exporter=config.exporter)
    seconds = time.perf_counter() - started
    log.info("convert: %s (%s, opset %d), %.1f s: %s", FULL, config.exporter, config.opset, seconds, why)
    return proto, {"source": FULL, "why": why, "seconds": round(seconds, 3)}
