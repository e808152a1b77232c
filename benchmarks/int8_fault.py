"""Issue 12, step 1: where does INT8 lose accuracy? Evidence on one run's validation split.

For each quantization variant: top-1 and mean |Δlogit| vs fp32 with ORT's integer kernels (the
default session) and with graph optimisation off (QDQ simulated in float: no integer kernels), so
a kernel/instruction-set fault is told apart from a graph/calibration fault. Then ORT's
``qdq_loss_debug`` on the chosen variant: SQNR of every weight and activation against fp32.

    python -m benchmarks.int8_fault RUN BUNDLE --out benchmarks/results/int8_fault.json
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.models.core.cpu import cpu_features
from imgcls.export.images import load_pixels, load_split
from imgcls.export.quantize import Recipe, calibration_pixels, prepare, quantize_prepared, recipe_for
from imgcls.models.core.card import ModelCard

log = logging.getLogger("bench.int8_fault")


def _session(path: Path, optimized: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits(path: Path, pixels: np.ndarray, optimized: bool = True, batch: int = 16) -> np.ndarray:
    sess = _session(path, optimized)
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + batch]})[0]
                           for i in range(0, len(pixels), batch)])


def variants(base: Recipe, first_conv: str) -> dict[str, Recipe]:
    return {
        "U8S8 reduce_range (old x86 default)": replace(base, activation_type="QUInt8", weight_type="QInt8", reduce_range=True),
        "U8S8": replace(base, activation_type="QUInt8", weight_type="QInt8", reduce_range=False),
        "S8S8 (old vnni/arm64 default)": replace(base, activation_type="QInt8", weight_type="QInt8", reduce_range=False),
        "U8U8": replace(base, activation_type="QUInt8", weight_type="QUInt8", reduce_range=False),
        "U8S8 per-tensor weights": replace(base, activation_type="QUInt8", weight_type="QInt8", per_channel=False),
        "U8S8, normalisation + first Conv fp32": replace(base, activation_type="QUInt8", weight_type="QInt8",
                                                         exclude_nodes=(first_conv,)),
    }


def score(path: Path, pixels: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, optimized in (("kernels", True), ("simulated", False)):
        got = logits(path, pixels, optimized)
        out[mode] = {"top1": float(np.mean(got.argmax(1) == labels)),
                     "mean_abs_dlogit": float(np.mean(np.abs(got - reference)))}
    return out


def loss_debug(fp32: Path, int8: Path, pixels: np.ndarray, scratch: Path, worst: int = 12) -> dict[str, Any]:
    """qdq_loss_debug: weight SQNR, activation SQNR (QDQ vs fp32 model), worst first."""
    from onnxruntime.quantization import qdq_loss_debug as qd

    def reader():
        return iter([{INPUT_NAME: pixels[i:i + 8]} for i in range(0, len(pixels), 8)])

    class Reader:
        def __init__(self):
            self.it = reader()

        def get_next(self):
            return next(self.it, None)

        def __iter__(self):
            return self.it

    aug_f, aug_q = scratch / "aug_fp32.onnx", scratch / "aug_int8.onnx"
    qd.modify_model_output_intermediate_tensors(str(fp32), str(aug_f))
    qd.modify_model_output_intermediate_tensors(str(int8), str(aug_q))
    float_acts = qd.collect_activations(str(aug_f), Reader())
    qdq_acts = qd.collect_activations(str(aug_q), Reader())
    matching = qd.create_activation_matching(qdq_acts, float_acts)
    act = qd.compute_activation_error(matching)
    weights = qd.compute_weight_error(qd.create_weight_matching(str(fp32), str(int8)))
    acts = sorted(((k, v.get("xmodel_err"), v["qdq_err"]) for k, v in act.items() if v.get("xmodel_err") is not None),
                  key=lambda t: t[1])
    local = sorted(((k, v["qdq_err"]) for k, v in act.items()), key=lambda t: t[1])
    return {"activations_compared": len(act), "weights_compared": len(weights),
            "worst_activation_sqnr_vs_fp32": acts[:worst],
            "worst_local_qdq_sqnr": local[:worst],
            "worst_weight_sqnr": sorted(weights.items(), key=lambda t: t[1])[:worst],
            "logits_sqnr": next((v for k, v, _ in acts if k == OUTPUT_NAME), None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("bundle", type=Path, help="a bundle of the run (its model.onnx is the fp32 graph)")
    parser.add_argument("--calibration-size", type=int, default=300)
    parser.add_argument("--debug-images", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="variant names to run (default all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    card = ModelCard.load(args.bundle)
    split = load_split(args.run, None)
    val = load_pixels(split, split.val, card.preprocess)
    cal = calibration_pixels(split, card, args.calibration_size)
    fp32 = args.bundle / "model.onnx"
    reference = logits(fp32, val.pixels)
    result: dict[str, Any] = {"cpu": cpu_features(), "images": int(len(val.labels)),
                              "fp32_top1": float(np.mean(reference.argmax(1) == val.labels)), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="int8-fault-") as scratch_dir:
        scratch = Path(scratch_dir)
        prepared = scratch / "prepared.onnx"
        prepare(fp32, prepared)
        result["prepared_ops"] = dict(Counter(n.op_type for n in onnx.load(str(prepared)).graph.node))
        first_conv = next(n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv")
        cache = scratch / "calibration.json"
        for name, recipe in variants(recipe_for("vnni", card.arch), first_conv).items():
            if args.only and name not in args.only:
                continue
            path = scratch / "int8.onnx"
            quantize_prepared(prepared, path, recipe, cal, cache=cache)
            result["variants"][name] = score(path, val.pixels, val.labels, reference)
            log.info("%s: %s", name, result["variants"][name])
            if name == "U8S8":
                result["loss_debug_U8S8"] = loss_debug(prepared, path, val.pixels[:args.debug_images], scratch)
    result["seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
