"""Quantization-aware training, the ladder's last rung, for models post-training quantization cannot save.

The trainable model is the *prepared fp32 ONNX graph itself* (BatchNorm already folded by ORT,
normalisation in the graph), run by a small PyTorch interpreter whose Conv/Gemm weights and biases
are parameters. Fake quantization sits exactly where ORT's PTQ model has its Quantize/Dequantize
pairs: activations with the PTQ model's own scales and zero points (the calibration cache's ranges),
weights per channel with ORT's symmetric rule recomputed every step. A few epochs on the run's
training split (cross-entropy, straight-through gradients), then the trained weights go back into
the fp32 graph and ORT quantizes it with the same cached ranges: a QDQ ONNX file that ONNX Runtime
runs. Parity: the QAT PyTorch model vs that ONNX file on validation images (top-1 agreement and
|Δlogit|), recorded and required like any export's parity; then the usual gate.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.export.images import image_set, load_pixels
from imgcls.models.core.progress import track

log = logging.getLogger(__name__)
progress_log = logging.getLogger("imgcls.progress")

QAT_BATCH = 16
MIN_PARITY_AGREEMENT = 0.98  # fake quantization in float vs ORT's integer kernels: rounding may differ


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _qrange(dtype: int, symmetric: bool) -> tuple[int, int]:
    if dtype == onnx.TensorProto.INT8:
        return (-127, 127) if symmetric else (-128, 127)
    return 0, 255


class QuantParams:
    """Activation (scale, zero point, range) and weight (dtype, axis) settings read from a QDQ model."""

    def __init__(self, qdq: onnx.ModelProto) -> None:
        inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
        self.activations: dict[str, tuple[float, int, int, int]] = {}
        self.weights: dict[str, tuple[int, int]] = {}  # fp32 weight name -> (quantized dtype, channel axis)
        for node in qdq.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
                scale, zp = inits[node.input[1]], inits[node.input[2]]
                dtype = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
                name = node.input[0].removesuffix("_QuantizeLinear_Input")  # a graph output ORT renamed
                self.activations[name] = (float(scale), int(zp), *_qrange(dtype, False))
            elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
                dtype = onnx.helper.np_dtype_to_tensor_dtype(inits[node.input[0]].dtype)
                if dtype in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):  # not the int32 biases
                    self.weights[node.input[0].removesuffix("_quantized")] = (dtype, int(_attr(node, "axis", 1)))


def fake_quant_weight(w: torch.Tensor, dtype: int, axis: int) -> torch.Tensor:
    """ORT's symmetric per-channel weight quantization, simulated with a straight-through gradient."""
    qmin, qmax = _qrange(dtype, True)
    absmax = w.detach().abs().movedim(axis, 0).flatten(1).amax(1).clamp_min(1e-12)
    scale = (2 * absmax / (qmax - qmin)).float()
    zero = torch.full_like(scale, (qmin + qmax + 1) // 2 if qmin == 0 else 0, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, qmin, qmax)


class OnnxModule(nn.Module):
    """The prepared fp32 graph as a PyTorch module; Conv/Gemm initializers are trainable parameters."""

    def __init__(self, fp32: onnx.ModelProto, quant: QuantParams | None) -> None:
        super().__init__()
        self.nodes = list(fp32.graph.node)
        self.quant = quant
        trainable = {n.input[i] for n in self.nodes if n.op_type in ("Conv", "Gemm") for i in (1, 2) if len(n.input) > i}
        self.params = nn.ParameterDict()
        self.names: dict[str, str] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for init in fp32.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if init.name in trainable and value.is_floating_point():
                key = f"p{len(self.params)}"
                self.params[key] = nn.Parameter(value)
                self.names[init.name] = key
            else:
                self.consts[init.name] = value

    def tensor(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
        if not name:
            return None
        if name in self.names:
            weight = self.params[self.names[name]]
            spec = self.quant.weights.get(name) if self.quant else None
            return fake_quant_weight(weight, *spec) if spec is not None else weight
        return env[name] if name in env else self.consts[name]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {INPUT_NAME: pixels}
        for node in self.nodes:
            args = [self.tensor(env, n) for n in node.input]
            out = OPS[node.op_type](node, *args)
            name = node.output[0]
            if self.quant and name in self.quant.activations:
                scale, zp, qmin, qmax = self.quant.activations[name]
                out = torch.fake_quantize_per_tensor_affine(out, scale, zp, qmin, qmax)
            env[name] = out
        return env[OUTPUT_NAME]


def _conv(node, x, w, b=None):
    pads = _attr(node, "pads", [0, 0, 0, 0])
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        pads = [0, 0]
    return F.conv2d(x, w, b, _attr(node, "strides", [1, 1]), pads[:2], _attr(node, "dilations", [1, 1]),
                    _attr(node, "group", 1))


def _gemm(node, a, b, c=None):
    a = a.t() if _attr(node, "transA", 0) else a
    b = b.t() if _attr(node, "transB", 0) else b
    out = _attr(node, "alpha", 1.0) * (a @ b)
    return out if c is None else out + _attr(node, "beta", 1.0) * c


def _reduce_mean(node, x, axes=None):
    dims = axes.tolist() if axes is not None else _attr(node, "axes")
    return x.mean(dim=dims, keepdim=bool(_attr(node, "keepdims", 1)))


def _reshape(node, x, shape):
    shape = [x.shape[i] if s == 0 else int(s) for i, s in enumerate(shape.tolist())]
    return x.reshape(shape)


def _pool(node, x):
    return F.max_pool2d(x, _attr(node, "kernel_shape"), _attr(node, "strides"), _attr(node, "pads", [0, 0, 0, 0])[:2])


OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Cast": lambda node, x: x.to(torch.float32),
    "Div": lambda node, a, b: a / b, "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b, "Add": lambda node, a, b: a + b,
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda node, a, b: a @ b,
    "Clip": lambda node, x, lo=None, hi=None: torch.clamp(x, lo, hi),
    "Relu": lambda node, x: F.relu(x), "ReduceMean": _reduce_mean, "Reshape": _reshape,
    "GlobalAveragePool": lambda node, x: x.mean(dim=(2, 3), keepdim=True),
    "Flatten": lambda node, x: x.flatten(_attr(node, "axis", 1)), "MaxPool": _pool,
}


def train(module: OnnxModule, pixels: np.ndarray, labels: np.ndarray, epochs: int, lr: float,
          progress: bool = False) -> list[float]:
    """Fine-tune with fake quantization; mean training loss per epoch (progress as log lines)."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    losses = []
    for epoch in range(epochs):
        order, total, started = rng.permutation(len(pixels)), 0.0, time.perf_counter()
        batches = [order[start:start + QAT_BATCH] for start in range(0, len(order), QAT_BATCH)]
        for idx in track(batches, f"qat epoch {epoch + 1}/{epochs}", len(order), enabled=progress, count=len):
            loss = F.cross_entropy(module(torch.from_numpy(pixels[idx])), torch.from_numpy(labels[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
        (progress_log if progress else log).info("qat epoch %d/%d: mean loss %.4f in %.0f s", epoch + 1, epochs,
                                                 losses[-1], time.perf_counter() - started)
    return losses


def write_weights(module: OnnxModule, fp32: onnx.ModelProto, target: Path) -> None:
    for init in fp32.graph.initializer:
        if init.name in module.names:
            value = module.params[module.names[init.name]].detach().numpy()
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    onnx.save(fp32, str(target))


def parity(module: OnnxModule, qdq: Path, pixels: np.ndarray) -> dict[str, Any]:
    from imgcls.export.validate import run_batches, session

    with torch.no_grad():
        reference = torch.cat([module(torch.from_numpy(pixels[i:i + QAT_BATCH]))
                               for i in range(0, len(pixels), QAT_BATCH)]).numpy()
    got = run_batches(session(qdq), pixels, QAT_BATCH)
    delta = np.abs(reference - got)
    figures = {"images": int(len(pixels)), "reference": "QAT PyTorch model (fake quantization)",
               "top1_agreement": float(np.mean(reference.argmax(1) == got.argmax(1))),
               "max_abs_logit_diff": float(delta.max()), "mean_abs_logit_diff": float(delta.mean()),
               "min_top1_agreement": MIN_PARITY_AGREEMENT}
    figures["passed"] = figures["top1_agreement"] >= MIN_PARITY_AGREEMENT
    return figures


def qat_rung(model: Any) -> Callable[[Any], Path | None]:
    """The ladder rung (``model``, the PyTorch checkpoint, is not needed: the graph is trained)."""

    def rung(ladder) -> Path | None:
        config = ladder.config
        split, card = ladder.split, ladder.card
        samples = list(split.train)
        if config.qat_images:  # spread over the class-sorted list, like calibration
            samples = samples[::max(1, len(samples) // config.qat_images)][:config.qat_images]
        train_set = load_pixels(split, samples, card.preprocess)
        trained_on = image_set(train_set.paths, split, "trained (QAT)")
        fp32 = onnx.load(str(ladder.prepared))
        module = OnnxModule(fp32, QuantParams(onnx.load(str(ladder.base_path)))).train()
        torch.manual_seed(0)
        losses = train(module, train_set.pixels, train_set.labels, config.qat_epochs, config.qat_lr, config.progress)
        module.eval()
        trained = ladder.scratch / "qat-fp32.onnx"
        write_weights(module, fp32, trained)
        path, settings = ladder.quantized(ladder.base_recipe, "qat.onnx", trained)
        val = load_pixels(split, split.val, card.preprocess, config.parity_images * 4)
        figures = parity(module, path, val.pixels)
        settings["qat"] = {"epochs": config.qat_epochs, "lr": config.qat_lr, "train_images": trained_on["images"],
                           "train_images_sha256": trained_on["images_sha256"],
                           "mean_loss_per_epoch": losses, "parity": figures}
        method = f"qat ({config.qat_epochs} epochs)"
        if not figures["passed"]:  # a QDQ file that does not do what the trained model does is not gated
            ladder.attempts.append({"method": method, "passed": False, "settings": settings, "gate": {},
                                    "reason": f"QAT parity failed: top-1 agreement {100 * figures['top1_agreement']:.1f}% "
                                              f"< {100 * MIN_PARITY_AGREEMENT:.0f}% on {figures['images']} images"})
            return None
        return path if ladder.gate(method, path, settings) else None

    return rung
