"""Validation of an exported graph: contract with the card, then parity with PyTorch on real images."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.export.errors import GraphContractError, ParityError
from imgcls.models.core.card import ModelCard
from imgcls.models.core.preprocess import Preprocess


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def graph_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise GraphContractError("graph declares no default-domain opset")


def check_graph(path: Path, card: ModelCard, opset: int) -> dict[str, Any]:
    """onnx.checker, the opset actually written, and input/output names, dtypes and shapes vs the card."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise GraphContractError(f"{path.name}: onnx.checker failed: {exc}") from exc
    proto = onnx.load(str(path), load_external_data=False)
    written = graph_opset(proto)
    if written != opset:
        raise GraphContractError(f"{path.name}: asked for opset {opset}, the exporter wrote opset {written}")
    inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise GraphContractError(
            f"{path.name}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got "
            f"{[i.name for i in inputs]} -> {[o.name for o in proto.graph.output]}"
        )
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise GraphContractError(f"{path.name}: input {INPUT_NAME!r} is not uint8")
    size = card.preprocess.crop_size
    in_dims, out_dims = _dims(inputs[0]), _dims(proto.graph.output[0])
    if len(in_dims) != 4 or isinstance(in_dims[0], int) or in_dims[1:] != [3, size, size]:
        raise GraphContractError(
            f"{path.name}: input shape {in_dims}, card expects [batch, 3, {size}, {size}] with a dynamic batch"
        )
    if len(out_dims) != 2 or out_dims[1] != card.num_classes:
        raise GraphContractError(
            f"{path.name}: output shape {out_dims}, card lists {card.num_classes} classes"
        )
    return {"opset": written, "input_shape": in_dims, "output_shape": out_dims, "checker": "passed"}


def session(model: Path | bytes, threads: int | None = None,
            config_entries: dict[str, str] | None = None):  # -> onnxruntime.InferenceSession
    """A CPU session of a model file, or of a serialized model (``ModelProto.SerializeToString()``);
    ``config_entries``: ORT session configuration keys (e.g. ``session.disable_quant_qdq``).

    Its threads do not busy-wait between runs, as serving's (``imgcls serve``, ``imgcls score``) and
    feature caching's do: the gate times what serving runs, and decoding threads keep their cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def run_batches(sess, pixels: np.ndarray, batch: int, output: str = OUTPUT_NAME) -> np.ndarray:
    outputs = [sess.run([output], {INPUT_NAME: pixels[i:i + batch]})[0] for i in range(0, len(pixels), batch)]
    return np.concatenate(outputs)


def torch_reference(model: nn.Module, preprocess: Preprocess, pixels: np.ndarray) -> np.ndarray:
    """The PyTorch model on ``Preprocess.normalize`` (numpy) — independent of the graph's normalisation."""
    with torch.no_grad():
        return model(torch.from_numpy(preprocess.normalize(pixels))).numpy().astype(np.float32)


def _compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    return {"max_abs_logit_diff": float(delta.max()), "mean_abs_logit_diff": float(delta.mean()),
            "top1_agreement": agree, "max_abs_reference_logit": float(np.abs(reference).max())}


def check_parity(
    path: Path, model: nn.Module, preprocess: Preprocess, pixels: np.ndarray, *, atol: float, batch: int
) -> dict[str, Any]:
    """ORT on uint8 pixels vs PyTorch on numpy-normalised pixels, at batch 1 and batch ``batch``."""
    reference = torch_reference(model, preprocess, pixels)
    sess = session(path)
    batch = min(batch, len(pixels))
    figures: dict[str, Any] = {"images": int(len(pixels)), "atol": atol, "reference": "pytorch fp32"}
    for name, size in (("batch_1", 1), (f"batch_{batch}", batch)):
        figures[name] = _compare(reference, run_batches(sess, pixels, size))
    failed = [
        name for name, fig in figures.items() if isinstance(fig, dict)
        and (fig["max_abs_logit_diff"] > atol or fig["top1_agreement"] < 1.0)
    ]
    figures["passed"] = not failed
    if failed:
        detail = "; ".join(
            f"{n}: max |Δlogit| {figures[n]['max_abs_logit_diff']:.3g} (limit {atol:g}, logits up to "
            f"{figures[n]['max_abs_reference_logit']:.3g}), top-1 agreement {100 * figures[n]['top1_agreement']:.1f}%"
            for n in failed
        )
        raise ParityError(f"{path.name}: ONNX Runtime disagrees with PyTorch on {len(pixels)} images: {detail}", figures)
    return figures
