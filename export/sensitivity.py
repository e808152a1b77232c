"""Per-node INT8 sensitivity, measured with ONNX Runtime's ``qdq_loss_debug`` on real images.

Both graphs (the prepared fp32 graph and its QDQ model) are augmented to output every
intermediate tensor; they run on the same validation batches, and for every quantized tensor we
accumulate the SQNR of the QDQ model's value against fp32, before its own Quantize/Dequantize pair
and after it. A node's sensitivity is the SQNR it loses: SQNR of its (quantized) output minus the
SQNR of its input as it arrives, so noise it merely passes on is not blamed on it. Weights' SQNR
(``create_weight_matching``) is reported beside it. Batches are reduced to sums as they come, so
memory stays at one batch of activations.
"""
from __future__ import annotations

import logging
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from imgcls.export.config import INPUT_NAME
from imgcls.models.core.progress import track

log = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})
FUSED_ACTIVATIONS = frozenset({"Clip", "Relu"})
BATCH = 4
NO_NOISE_DB = 120.0  # an input that arrives exact (e.g. the uint8 pixels)


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    sqnr_lost_db: float
    input_sqnr_db: float
    output_sqnr_db: float
    weight_sqnr_db: float | None
    weight_elements: int = 0

    def reason(self) -> str:
        weight = f", weight SQNR {self.weight_sqnr_db:.1f} dB" if self.weight_sqnr_db is not None else ""
        return (f"loses {self.sqnr_lost_db:.1f} dB SQNR vs fp32 (input {self.input_sqnr_db:.1f} dB -> "
                f"output {self.output_sqnr_db:.1f} dB){weight}")


class _Noise:
    """Running ||float||² and ||float - x||² per tensor."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = defaultdict(float)
        self.noise: dict[tuple[str, str], float] = defaultdict(float)

    def add(self, name: str, reference: np.ndarray, pre: np.ndarray, post: np.ndarray) -> None:
        ref = reference.astype(np.float64)
        self.signal[name] += float(np.sum(ref * ref))
        self.noise[(name, "pre")] += float(np.sum((ref - pre) ** 2))
        self.noise[(name, "post")] += float(np.sum((ref - post) ** 2))

    def sqnr(self, name: str, which: str) -> float | None:
        if name not in self.signal:
            return None
        noise = self.noise[(name, which)]
        if noise <= 0:
            return NO_NOISE_DB
        return min(NO_NOISE_DB, 10 * math.log10(max(self.signal[name], 1e-30) / noise))


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_noise(fp32: Path, int8: Path, pixels: np.ndarray, progress: bool = False) -> _Noise:
    from onnxruntime.quantization import qdq_loss_debug as qd

    noise = _Noise()
    with tempfile.TemporaryDirectory(prefix="imgcls-sens-") as scratch:
        paths = {"fp32": Path(scratch) / "fp32.onnx", "int8": Path(scratch) / "int8.onnx"}
        qd.modify_model_output_intermediate_tensors(str(fp32), str(paths["fp32"]))
        qd.modify_model_output_intermediate_tensors(str(int8), str(paths["int8"]))
        sessions = {k: _session(p) for k, p in paths.items()}
        starts = range(0, len(pixels), BATCH)
        for start in track(starts, "int8: node sensitivity", len(pixels), enabled=progress,
                           count=lambda start: len(pixels[start:start + BATCH])):
            feed = {INPUT_NAME: pixels[start:start + BATCH]}
            acts = {}
            for kind, sess in sessions.items():
                names = [o.name for o in sess.get_outputs()]
                acts[kind] = {n[:-len(qd._TENSOR_SAVE_POSTFIX)]: [v] for n, v in zip(names, sess.run(None, feed))
                              if n.endswith(qd._TENSOR_SAVE_POSTFIX)}
            for name, match in qd.create_activation_matching(acts["int8"], acts["fp32"]).items():
                if match.get("float"):
                    noise.add(name, match["float"][0], match["pre_qdq"][0], match["post_qdq"][0])
            del acts
    return noise


def _output_tensor(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """The node's output, or that of the Clip/Relu fused into it."""
    following = consumers.get(node.output[0], [])
    if len(following) == 1 and following[0].op_type in FUSED_ACTIVATIONS:
        return following[0].output[0]
    return node.output[0]


def rank_nodes(fp32: Path, int8: Path, pixels: np.ndarray, progress: bool = False) -> list[NodeSensitivity]:
    """Quantized weighted nodes of ``fp32`` (its node names), most sensitive first."""
    from onnxruntime.quantization import qdq_loss_debug as qd

    noise = measure_noise(fp32, int8, pixels, progress)
    weights = qd.compute_weight_error(qd.create_weight_matching(str(fp32), str(int8)))
    graph = onnx.load(str(fp32), load_external_data=False).graph
    sizes = {init.name: tuple(init.dims) for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    ranked = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        out = noise.sqnr(_output_tensor(node, consumers), "post")
        if out is None:
            continue  # not quantized (excluded, or not a quantizable op here)
        # As it arrives: after its producer's Q/DQ ("pre" would compare an unclipped value where ORT
        # folded a Clip into that Q/DQ pair).
        arriving = noise.sqnr(node.input[0], "post")
        arriving = NO_NOISE_DB if arriving is None else arriving
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        elements = int(np.prod(sizes[node.input[1]])) if len(node.input) > 1 and node.input[1] in sizes else 0
        ranked.append(NodeSensitivity(node.name, node.op_type, arriving - out, arriving, out, weight, elements))
    ranked.sort(key=lambda s: s.sqnr_lost_db, reverse=True)
    return ranked


def summary(ranked: list[NodeSensitivity], top: int = 10) -> list[dict[str, Any]]:
    return [{"node": s.node, "op_type": s.op_type, "sqnr_lost_db": round(s.sqnr_lost_db, 2),
             "input_sqnr_db": round(s.input_sqnr_db, 2), "output_sqnr_db": round(s.output_sqnr_db, 2),
             "weight_sqnr_db": None if s.weight_sqnr_db is None else round(s.weight_sqnr_db, 2)}
            for s in ranked[:top]]
