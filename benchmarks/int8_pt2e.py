"""Issue 12, step 1: an independent quantizer (torchao PT2E) on the same checkpoint and images as ours.

Our INT8 is ONNX Runtime static QDQ (``imgcls.export.quantize``). Here the run's fp32 PyTorch model,
wrapped like the export (``PixelsToLogits``: uint8 pixels in, the card's normalisation inside), is
quantized with torchao's PT2E post-training flow (``prepare_pt2e`` / ``convert_pt2e``) calibrated on
the very images our ORT path calibrates on, and the converted reference model (quantize/dequantize
around float ops, run in PyTorch) is scored on the whole validation split beside fp32 PyTorch, the
bundle's fp32 ONNX and our plain ORT PTQ. Variants: torchao's x86 quantizer (uint8 per-tensor
activations, histogram observer; int8 per-channel symmetric weights) as shipped, which leaves Convs
fed by an explicit ``pad`` (TF-"same" stride-2 padding) in float; the same with those Convs quantized
too (ORT's coverage: it folds the pads into Conv and quantizes all 49); that with min-max activation
ranges (ORT's calibration); XNNPACK's symmetric per-channel config (torchao's testing copy: the
quantizer itself moved to ExecuTorch). XNNPACK's annotators fuse Conv+ReLU but not Conv+ReLU6
(``hardtanh``): a ReLU6 output shares the observer of its Conv's pre-clip output, so [0, 6] gets a
few of the 256 levels; its figure measures that gap, not INT8 as such.

    python -m benchmarks.int8_pt2e RUN BUNDLE --out benchmarks/results/int8_pt2e.json
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from benchmarks.report import markdown_table, setup_logging, write_result
from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.models.training.onnx_graph import PixelsToLogits
from imgcls.models.core.cpu import local_target
from imgcls.export.images import load_pixels, load_split
from imgcls.export.quantize import calibration_pixels, quantize_file, recipe_for
from imgcls.models.core.card import ModelCard
from imgcls.models.training.checkpoint import load_checkpoint

log = logging.getLogger("bench.int8_pt2e")
BATCH = 16
WEIGHTED = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def torch_logits(model: Callable[[torch.Tensor], torch.Tensor], pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(pixels[i:i + BATCH])).numpy()
                               for i in range(0, len(pixels), BATCH)])


def ort_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + BATCH]})[0]
                           for i in range(0, len(pixels), BATCH)])


def _every_weighted_op(config: Any) -> Any:
    """A quantizer for the Convs/Linears another left in float (its input and weight, with ``config``)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class EveryWeightedOp(Quantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target in WEIGHTED and "quantization_annotation" not in node.meta:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[0]: config.input_activation, node.args[1]: config.weight},
                        _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return EveryWeightedOp()


def quantizers() -> dict[str, Callable[[], Any]]:
    """Variant name -> a fresh torchao quantizer (imported here: torchao is the ``bench`` extra)."""
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.composable_quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    def x86(config: Any, every_conv: bool) -> Any:
        own = X86InductorQuantizer().set_global(config)
        return ComposableQuantizer([own, _every_weighted_op(config)]) if every_conv else own

    def minmax() -> Any:
        config = get_default_x86_inductor_quantization_config()
        act = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        return replace(config, input_activation=act, output_activation=act)

    def xnnpack() -> Any:
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))

    return {
        "PT2E x86 (torchao default)": lambda: x86(get_default_x86_inductor_quantization_config(), False),
        "PT2E x86, padded Convs too": lambda: x86(get_default_x86_inductor_quantization_config(), True),
        "PT2E x86, padded Convs too, min-max": lambda: x86(minmax(), True),
        "PT2E XNNPACK symmetric per-channel (ReLU6 not fused)": xnnpack,
    }


def pt2e_int8(wrapper: nn.Module, quantizer: Any, calibration: np.ndarray) -> torch.fx.GraphModule:
    """Export, annotate, calibrate on ``calibration`` (uint8 pixels), convert to the reference model."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.from_numpy(calibration[:2])
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(wrapper, (example,), dynamic_shapes={"pixels": {0: batch}}).module()
    prepared = prepare_pt2e(graph, quantizer)
    torch_logits(prepared, calibration)
    return convert_pt2e(prepared)


def coverage(model: torch.fx.GraphModule) -> dict[str, int]:
    """How many Conv/Linear ops run on dequantized (INT8) inputs and weights."""
    dequantized = {torch.ops.quantized_decomposed.dequantize_per_tensor.default,
                   torch.ops.quantized_decomposed.dequantize_per_channel.default}
    weighted = [n for n in model.graph.nodes if n.op == "call_function" and n.target in WEIGHTED]
    quantized = [n for n in weighted
                 if all(isinstance(a, torch.fx.Node) and a.target in dequantized for a in n.args[:2])]
    return {"weighted_ops": len(weighted), "int8_weighted_ops": len(quantized)}


def compare(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    top1 = float(np.mean(logits.argmax(1) == labels))
    return {"top1": top1, "drop_points": 100 * (float(np.mean(reference.argmax(1) == labels)) - top1),
            "agreement_with_fp32": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            "mean_abs_dlogit": float(np.mean(np.abs(logits - reference))),
            "wrong": np.flatnonzero(logits.argmax(1) != labels)}


def shared_errors(rows: dict[str, dict[str, Any]], baseline: str) -> None:
    """Replace each row's wrong image indices by their count and how many ``baseline`` gets wrong too."""
    theirs = set(rows[baseline]["wrong"].tolist())
    for row in rows.values():
        wrong = set(row.pop("wrong").tolist())
        row["errors"], row["errors_shared_with_ort_ptq"] = len(wrong), len(wrong & theirs)


def _short(path: Path) -> str:
    """The folder and its parent (``runs/demo``): a result must not name this machine's folders."""
    return str(Path(*path.resolve().parts[-2:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run (checkpoint/ + split.json)")
    parser.add_argument("bundle", type=Path, help="a bundle exported from the run (its model.onnx)")
    parser.add_argument("--calibration-size", type=int, default=300)
    parser.add_argument("--only", nargs="*", help="PT2E variant names to run (default all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        import torchao
    except ImportError:
        parser.error("needs torchao (the bench extra): pip install -e '.[bench]'")

    model, card = load_checkpoint(args.run)
    bundle_card = ModelCard.load(args.bundle)
    if bundle_card.lineage.get("weights_sha256") != card.lineage.get("weights_sha256"):
        parser.error(f"{args.bundle} was not exported from {args.run}'s checkpoint (weights_sha256 differs)")
    wrapper = PixelsToLogits(model, card.preprocess).eval()
    split = load_split(args.run, None)
    val = load_pixels(split, split.val, card.preprocess)
    calibration = calibration_pixels(split, card, args.calibration_size)
    log.info("%d validation images, %d calibration images", len(val.labels), len(calibration))
    reference = torch_logits(wrapper, val.pixels)
    rows: dict[str, dict[str, Any]] = {"fp32 PyTorch": {**compare(reference, val.labels, reference), "seconds": 0.0}}
    recipe = recipe_for(local_target(), card.arch)
    ours = f"ORT PTQ (ours, {recipe.target} recipe)"
    with tempfile.TemporaryDirectory(prefix="int8-pt2e-") as scratch:
        int8_path = Path(scratch) / "int8.onnx"
        for name, path in (("ORT fp32 (bundle model.onnx)", args.bundle / "model.onnx"), (ours, int8_path)):
            began = time.perf_counter()
            if path == int8_path:
                quantize_file(args.bundle / "model.onnx", int8_path, recipe, calibration)
            rows[name] = {**compare(ort_logits(path, val.pixels), val.labels, reference),
                          "seconds": time.perf_counter() - began}
            log.info("%s: top-1 %.4f, mean |dlogit| %.3f", name, rows[name]["top1"], rows[name]["mean_abs_dlogit"])
    for name, make in quantizers().items():
        if args.only and name not in args.only:
            continue
        began = time.perf_counter()
        converted = pt2e_int8(wrapper, make(), calibration)
        rows[name] = {**compare(torch_logits(converted, val.pixels), val.labels, reference),
                      **coverage(converted), "seconds": time.perf_counter() - began}
        log.info("%s: top-1 %.4f, mean |dlogit| %.3f", name, rows[name]["top1"], rows[name]["mean_abs_dlogit"])
    shared_errors(rows, ours)
    result = {"run": _short(args.run), "bundle": _short(args.bundle), "arch": card.arch,
              "versions": {"torch": torch.__version__, "torchao": torchao.__version__},
              "images": int(len(val.labels)), "calibration_images": int(len(calibration)),
              "ort_recipe": recipe.settings(), "variants": rows, "seconds": time.perf_counter() - started}
    write_result(args.out, "int8_pt2e", result)
    print(markdown_table(
        ["variant", "top-1 %", "drop (points)", "agreement with fp32 %", "mean \\|Δlogit\\|", "INT8 Conv/Linear",
         "errors (shared with ORT PTQ)"],
        [[name, 100 * r["top1"], r["drop_points"], 100 * r["agreement_with_fp32"], r["mean_abs_dlogit"],
          f'{r["int8_weighted_ops"]}/{r["weighted_ops"]}' if "weighted_ops" in r else "-",
          f'{r["errors"]} ({r["errors_shared_with_ort_ptq"]})'] for name, r in rows.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
