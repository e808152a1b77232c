"""The precision gate (INT8, fp16): fp32 vs the smaller model on the labelled validation split, measured in the same run."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME, ExportConfig
from imgcls.export.errors import QuantizationRefused
from imgcls.export.images import LabelledPixels, images_sha256, load_pixels
from imgcls.export.validate import run_batches, session
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing

# Per model, alternating rounds (at least 3 each), after one warm-up run. The demo's U8S8 file vs fp32
# at batch 8, 2-core EPYC with VNNI, 6 repeats each: at load 1.5, 1.0 s gave 2.19x (sd 0.026), 0.5 s
# 2.15x (sd 0.029), 0.25 s 2.16x (sd 0.077); at load 12 the spread was the machine's (sd 0.15-0.38).
BENCH_SECONDS = 0.5


def throughput(sessions: dict[str, Any], pixels: np.ndarray, batch: int) -> dict[str, float]:
    """Images/s of each session on the same batch, measured in alternating rounds."""
    if len(pixels) < batch:
        pixels = np.concatenate([pixels] * (batch // max(1, len(pixels)) + 1))
    inputs = {INPUT_NAME: pixels[:batch]}
    elapsed = {name: 0.0 for name in sessions}
    runs = {name: 0 for name in sessions}
    for sess in sessions.values():
        sess.run([OUTPUT_NAME], inputs)
    deadline = time.perf_counter() + BENCH_SECONDS * len(sessions)
    while time.perf_counter() < deadline or min(runs.values()) < 3:
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run([OUTPUT_NAME], inputs)
            elapsed[name] += time.perf_counter() - start
            runs[name] += 1
    return {name: batch * runs[name] / elapsed[name] for name in sessions}


@dataclass(frozen=True)
class GateReference:
    """What every gate of one export shares: the validation pixels, the fp32 session and its predictions.

    Built once per export (``gate_reference``), so a ladder of rungs evaluates fp32 once."""

    val: LabelledPixels
    fp32: Any  # onnxruntime.InferenceSession
    fp32_preds: np.ndarray


def gate_reference(fp32_path: Path, split: SplitListing, card: ModelCard, config: ExportConfig,
                   precision: str = "int8") -> GateReference:
    val = load_pixels(split, split.val, card.preprocess, config.gate_images)
    if len(val.labels) == 0:
        raise QuantizationRefused(f"the validation split has no readable images to gate {precision} on", {})
    fp32 = session(fp32_path)
    return GateReference(val, fp32, run_batches(fp32, val.pixels, config.benchmark_batch).argmax(1))


def precision_gate(fp32_path: Path, other_path: Path, split: SplitListing, card: ModelCard,
                   config: ExportConfig, precision: str = "int8",
                   reference: GateReference | None = None) -> dict[str, Any]:
    """Accuracy, agreement, size and speed of ``other_path`` vs fp32 on the validation split.

    ``reference``: the fp32 side, computed once per export (default: computed here).
    Raises ``QuantizationRefused`` when top-1 accuracy drops more than ``config.max_accuracy_drop`` points.
    """
    reference = reference or gate_reference(fp32_path, split, card, config, precision)
    val = reference.val
    sessions = {"fp32": reference.fp32, precision: session(other_path)}
    preds = {"fp32": reference.fp32_preds,
             precision: run_batches(sessions[precision], val.pixels, config.benchmark_batch).argmax(1)}
    accuracy = {name: float(np.mean(p == val.labels)) for name, p in preds.items()}
    speed = throughput(sessions, val.pixels, config.benchmark_batch)
    sizes = {"fp32": fp32_path.stat().st_size, precision: other_path.stat().st_size}
    drop = 100.0 * (accuracy["fp32"] - accuracy[precision])
    figures = {
        "images": int(len(val.labels)), "images_sha256": images_sha256(val.paths),
        "fp32_top1": accuracy["fp32"], f"{precision}_top1": accuracy[precision], "accuracy_drop_points": drop,
        "max_accuracy_drop_points": config.max_accuracy_drop,
        "top1_agreement": float(np.mean(preds["fp32"] == preds[precision])),
        "fp32_bytes": sizes["fp32"], f"{precision}_bytes": sizes[precision], "size_ratio": sizes[precision] / sizes["fp32"],
        "fp32_images_per_s": speed["fp32"], f"{precision}_images_per_s": speed[precision],
        "speed_ratio": speed[precision] / speed["fp32"], "benchmark_batch": config.benchmark_batch,
        "benchmark_note": "same machine, same run, alternating rounds; CPU ONNX Runtime",
    }
    if drop > config.max_accuracy_drop:
        raise QuantizationRefused(
            f"{precision} top-1 {100 * accuracy[precision]:.2f}% vs fp32 {100 * accuracy['fp32']:.2f}% on "
            f"{len(val.labels)} held-out (validation) images: a drop of {drop:.2f} points exceeds the allowed "
            f"{config.max_accuracy_drop:g}; the bundle keeps fp32 only", figures)
    return figures


def keep_if_gate_passes(
    fp32_path: Path, variant_path: Path, precision: str, settings: dict[str, Any],
    split: SplitListing, card: ModelCard, config: ExportConfig, files: dict, report: dict,
) -> tuple[ModelCard, dict]:
    """Check the variant's graph contract, gate it, and keep its file only if the gate passes.

    The outcome (figures, settings, refusal reason) goes into ``report[precision]`` and the card.
    """
    import logging

    from imgcls.export.validate import check_graph

    check_graph(variant_path, card, config.opset)
    try:
        figures = precision_gate(fp32_path, variant_path, split, card, config, precision)
        section = {"status": "passed", **settings, "gate": figures}
        files = {**files, variant_path.name: {"precision": precision}}
    except QuantizationRefused as refusal:
        variant_path.unlink()
        logging.getLogger(__name__).info("%s refused: %s", precision, refusal)  # the CLI says it once
        section = {"status": "refused", "reason": str(refusal), **settings, "gate": refusal.figures}
    report[precision] = section
    return card.updated(export={precision: section}), files
