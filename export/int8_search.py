"""``--int8``: the ladder that stops at the first INT8 variant passing the gate.

1. plain post-training quantization (static QDQ, per-channel, the target's types);
2. the INT8 backbone with its classifier retrained on the INT8 features (``imgcls.export.head_refit``:
   the classifier stays fp32, a few kilobytes), when the graph ends in a Gemm;
3. mixed precision: nodes ranked by measured sensitivity (``imgcls.export.sensitivity``), the
   fewest most sensitive kept in fp32 (1, 2, 4, ... nodes) while the file stays within the size
   budget;
4. quantization-aware training (``imgcls.export.qat``), when allowed and the run's images are there.

The gate is the same for every rung (``precision_gate``: top-1 drop on the validation split) and is
never loosened. Nothing a rung fits (calibration ranges, the retrained head, QAT, the sensitivity
ranking) sees a gate image: the ladder works on ``held_out(split)``, and each set is recorded in the
card (count and SHA-256 of its sorted paths) after a check that it shares no image with the gate's.
A rung with too few images to fit on apart from the gate's is skipped, and the report says why.
Calibration runs once (ORT's calibration cache), so later rungs cost a quantization
and a gate each. The report lists every attempt with its figures, the method kept, what was kept in
fp32 and why, the target and the CPU features of the machine whose kernels ran the gate.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imgcls.export.config import FP32_FILENAME, INT8_FILENAME, ExportConfig
from imgcls.models.core.cpu import cpu_features, local_target
from imgcls.export.errors import QuantizationRefused
from imgcls.export.gate import GateReference, gate_reference, precision_gate
from imgcls.export.images import held_out, image_set, load_pixels
from imgcls.export.speed import format_of, speed_record
from imgcls.export.quantize import (DYNAMIC_MATMUL_ARCHS, Recipe, calibration_images, fast_recipe_for, prepare,
                                    quantize_prepared, recipe_for)
from imgcls.export.validate import check_graph
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing

log = logging.getLogger(__name__)
progress_log = logging.getLogger("imgcls.progress")  # each rung's result, shown unless --no-progress
HEAD_METHOD = "ptq + retrained head"


def resolve_target(config: ExportConfig) -> str:
    return local_target() if config.int8_target == "auto" else config.int8_target


def _attempt(method: str, candidate: Path, fp32: Path, split: SplitListing, card: ModelCard,
             config: ExportConfig, settings: dict[str, Any],
             reference: Callable[[], GateReference]) -> dict[str, Any]:
    """Gate one candidate file against the export's one fp32 evaluation; the attempt record."""
    check_graph(candidate, card, config.opset)
    try:
        figures = precision_gate(fp32, candidate, split, card, config, "int8", reference())
        attempt = {"method": method, "passed": True, "gate": figures}
    except QuantizationRefused as refusal:
        attempt = {"method": method, "passed": False, "reason": str(refusal), "gate": refusal.figures}
    gate = attempt["gate"]
    if gate and config.progress:
        progress_log.info("int8 %s: top-1 %.2f%% vs fp32 %.2f%% (%s) on %d held-out images, %.1f%% of fp32 size -> %s",
                          method, 100 * gate["int8_top1"], 100 * gate["fp32_top1"], versus_fp32(gate, "int8"),
                          gate["images"], 100 * gate["size_ratio"], "passed" if attempt["passed"] else "refused")
    return {**attempt, "settings": settings}


def _mixed_counts(limit: int) -> list[int]:
    counts, k = [], 1
    while k <= limit:
        counts.append(k)
        k *= 2
    if counts and counts[-1] != limit and limit > 0:
        counts.append(limit)
    return counts


def versus_fp32(gate: dict[str, Any], precision: str) -> str:
    """``"INT8 1.39 points better than fp32"`` / ``"... worse ..."`` / ``"same top-1 as fp32"``."""
    drop = gate["accuracy_drop_points"]
    if abs(drop) < 0.005:
        return "same top-1 as fp32"
    return f"{precision.upper()} {abs(drop):.2f} points {'worse' if drop > 0 else 'better'} than fp32"


class Ladder:
    """State shared by the rungs: the prepared graph, calibration cache, images, attempts.

    ``split`` is ``held_out``: its ``train`` (what rungs fit on) shares no image with its ``val``
    (what the gate grades on).
    """

    def __init__(self, staging: Path, scratch: Path, card: ModelCard, split: SplitListing, config: ExportConfig) -> None:
        self.staging, self.scratch, self.card, self.split, self.config = staging, scratch, card, split, config
        self.fp32 = staging / FP32_FILENAME
        self.prepared = scratch / "prepared.onnx"
        self.cache = scratch / "calibration.json"
        self.target = resolve_target(config)
        self.attempts: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self._reference: GateReference | None = None
        prepare(self.fp32, self.prepared)
        self.calibration: dict[str, Any] = {}
        if card.arch in DYNAMIC_MATMUL_ARCHS:  # dynamic quantization needs no calibration images
            self.pixels = np.zeros((0,), np.uint8)
        else:
            chosen = calibration_images(split, card, config.calibration_size)
            self.pixels = chosen.pixels
            self.calibration = image_set(chosen.paths, split, "calibrated")

    def quantized(self, recipe: Recipe, name: str, source: Path | None = None) -> tuple[Path, dict[str, Any]]:
        """``scratch/name``: ``source`` (default: the prepared fp32 graph) quantized with the cached ranges."""
        path = self.scratch / name
        settings = quantize_prepared(source or self.prepared, path, recipe, self.pixels, self.config.progress,
                                     self.cache)
        if self.calibration:
            settings["calibration_images_sha256"] = self.calibration["images_sha256"]
        return path, settings

    def skip(self, method: str, reason: str, warn: bool = True) -> None:
        """A rung not tried: said in the log (a warning when it is about the images) and the report."""
        (log.warning if warn else log.info)("int8 %s: skipped: %s", method, reason)
        self.skipped.append({"method": method, "reason": reason})

    def reference(self) -> GateReference:
        """The fp32 side of every gate: validation pixels and fp32 predictions, computed once."""
        if self._reference is None:
            self._reference = gate_reference(self.fp32, self.split, self.card, self.config)
        return self._reference

    def gate(self, method: str, path: Path, settings: dict[str, Any]) -> bool:
        attempt = _attempt(method, path, self.fp32, self.split, self.card, self.config, settings, self.reference)
        self.attempts.append(attempt)
        return attempt["passed"]

    def ptq(self, recipe: Recipe | None = None) -> Path | None:
        """Plain PTQ with ``recipe`` (default: the target's accurate format, the base of the later rungs)."""
        if recipe is None:
            recipe = recipe_for(self.target, self.card.arch, self.config.calibration_method, self.config.exclude_nodes)
            path, settings = self.quantized(recipe, "ptq.onnx")
            self.base_recipe, self.base_path = recipe, path
            return path if self.gate("ptq", path, settings) else None
        fmt = format_of(recipe.settings())
        path, settings = self.quantized(recipe, f"ptq-{fmt}.onnx")
        return path if self.gate(f"ptq ({fmt})", path, settings) else None

    def head(self, recipe: Recipe | None = None) -> Path | None:
        """PTQ with the classifier left fp32 and retrained on the INT8 model's own training features
        (``recipe``: default the base recipe of the ``ptq`` rung)."""
        import onnx

        from imgcls.export.head_refit import (MIN_FIT_IMAGES, HeadRecipe, find_head, head_samples, head_weights,
                                              int8_features, refit, write_head)

        fmt = None if recipe is None else format_of(recipe.settings())
        method = HEAD_METHOD if fmt is None else f"{HEAD_METHOD} ({fmt})"
        recipe = recipe or self.base_recipe
        prepared = onnx.load(str(self.prepared))
        head = find_head(prepared)
        if head is None:
            self.skip(method, "the graph does not end in a Gemm with constant weights", warn=False)
            return None
        samples = head_samples(self.split, self.config.head_images)
        if len(samples) < MIN_FIT_IMAGES:
            self.skip(method, f"only {len(samples)} images to retrain the classifier on apart from the gate's "
                              f"{len(self.split.val)}; an honest refit needs at least {MIN_FIT_IMAGES} "
                              "(fewer are memorised, not learned)")
            return None
        fitted = image_set([s.path for s in samples], self.split, "retrained the head")
        head_recipe = HeadRecipe.from_card(self.card)
        backbone, settings = self.quantized(recipe.excluding((head.name,)), f"head-backbone-{fmt or 'base'}.onnx")
        features, labels, engine = int8_features(backbone, head, self.split, samples, self.card, self.config.progress)
        weight, bias, figures = refit(*head_weights(prepared, head), features, labels, head_recipe)
        path = self.scratch / f"head-{fmt or 'base'}.onnx"
        write_head(backbone, path, head, weight, bias)
        settings["head_refit"] = {"node": head.name, **fitted, "images_read": int(len(labels)), "recipe": asdict(head_recipe),
                                  "features": engine,
                                  **{k: round(v, 6) for k, v in figures.items()}}
        log.info("int8 head: classifier retrained on %d INT8 training features (train top-1 %.2f%% -> %.2f%%)",
                 len(labels), 100 * figures["train_top1_before"], 100 * figures["train_top1_after"])
        return path if self.gate(method, path, settings) else None

    def mixed(self) -> Path | None:
        from imgcls.export.sensitivity import rank_nodes

        train = list(self.split.train)  # ranked on fitting images: choosing nodes is fitting too
        ranking = load_pixels(self.split, train[::max(1, len(train) // self.config.sensitivity_images)],
                              self.card.preprocess, self.config.sensitivity_images)
        ranked_on = image_set(ranking.paths, self.split, "ranked nodes")
        ranked = rank_nodes(self.prepared, self.base_path, ranking.pixels, self.config.progress)
        fp32_bytes = self.fp32.stat().st_size
        fitting = within_budget(ranked, self.config.mixed_size_budget * fp32_bytes)
        for count in _mixed_counts(min(self.config.max_fp32_nodes, len(fitting))):
            kept = fitting[:count]
            recipe = self.base_recipe.excluding(tuple(s.node for s in kept))
            path, settings = self.quantized(recipe, f"mixed-{count}.onnx")
            settings["kept_fp32"] = [{"node": s.node, "op_type": s.op_type, "why": s.reason()} for s in kept]
            settings["sensitivity"] = ranked_on
            if self.gate(f"mixed ({count} nodes fp32)", path, settings):
                return path
        return None


def within_budget(ranked: list, budget_bytes: float) -> list:
    """The ranked nodes, most sensitive first, skipping any whose fp32 weights (3 more bytes per
    weight than INT8) would take the total over ``budget_bytes``."""
    chosen, used = [], 0
    for node in ranked:
        extra = 3 * node.weight_elements
        if used + extra <= budget_bytes:
            chosen.append(node)
            used += extra
    return chosen


Rung = Callable[[Ladder], "Path | None"]


def rung_plan(target: str, arch: str, config: ExportConfig) -> list[tuple[str, Rung]]:
    """The rungs in the order they are tried. Where the target has a fast format (``FAST_TYPES``:
    U8S8 on VNNI), it comes first, plain then with the retrained head, so a server with VNNI gets an
    INT8 file that is accurate and fast; then the accurate format: PTQ, retrained head, mixed precision."""
    fast = fast_recipe_for(target, arch, config.calibration_method, config.exclude_nodes)
    rungs: list[tuple[str, Rung]] = []
    if fast is not None:
        fmt = format_of(fast.settings())
        rungs.append((f"ptq {fmt}", lambda ladder: ladder.ptq(fast)))
        if config.head_refit:
            rungs.append((f"head {fmt}", lambda ladder: ladder.head(fast)))
    rungs.append(("ptq", Ladder.ptq))
    if config.head_refit and arch not in DYNAMIC_MATMUL_ARCHS:
        rungs.append(("head", Ladder.head))
    if config.mixed_precision and arch not in DYNAMIC_MATMUL_ARCHS:
        rungs.append(("mixed", Ladder.mixed))
    return rungs


def search(staging: Path, card: ModelCard, split: SplitListing, config: ExportConfig,
           extra_rungs: tuple[tuple[str, Rung], ...] = ()) -> tuple[Path | None, dict[str, Any]]:
    """Try the rungs in order; ``(staging/model.int8.onnx or None, report section)``."""
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as scratch:
        ladder = Ladder(staging, Path(scratch), card, held_out(split), config)
        rungs = rung_plan(ladder.target, card.arch, config) + list(extra_rungs)
        kept = None
        for name, rung in rungs:
            kept = rung(ladder)
            if kept is not None:
                break
        section = _section(ladder, kept)
        if kept is not None:
            shutil.copyfile(kept, staging / INT8_FILENAME)
            return staging / INT8_FILENAME, section
        return None, section


def _attempt_record(attempt: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in attempt.items() if k != "settings"}
    record["exclude_nodes"] = attempt["settings"].get("exclude_nodes", [])
    for key in ("qat", "head_refit", "sensitivity"):
        if key in attempt["settings"]:
            record[key] = attempt["settings"][key]
    return record


def _section(ladder: Ladder, kept: Path | None) -> dict[str, Any]:
    final = ladder.attempts[-1]
    gated_on = cpu_features()
    fmt = format_of(final["settings"])
    section: dict[str, Any] = {
        "status": "passed" if kept is not None else "refused",
        "method": final["method"] if kept is not None else None,
        "target": ladder.target, "target_choice": "auto (from CPU features)" if ladder.config.int8_target == "auto" else "--int8-target",
        "gated_on": gated_on, **final["settings"], "gate": final["gate"], "int8_format": fmt,
        "attempts": [_attempt_record(a) for a in ladder.attempts],
    }
    speed = speed_record(final["gate"], fmt, kept is not None, gated_on)
    if speed is not None:
        section["speed"] = speed
        log.info("%s", speed["line"])
    if ladder.skipped:
        section["skipped"] = ladder.skipped
    if kept is None:
        tried = ", ".join(a["method"] for a in ladder.attempts)
        section["reason"] = f"no INT8 variant passed the gate (tried {tried}); last: {final.get('reason', '')}"
    return section


def add_int8(staging: Path, model: Any, card: ModelCard, split: SplitListing, files: dict, config: ExportConfig,
             report: dict) -> tuple[ModelCard, dict]:
    """Run the ladder; keep ``model.int8.onnx`` only if a rung passed. Outcome in the report and card."""
    rungs: tuple[tuple[str, Rung], ...] = ()
    if config.qat and card.arch not in DYNAMIC_MATMUL_ARCHS:
        from imgcls.export.qat import qat_rung

        rungs = (("qat", qat_rung(model)),)
    path, section = search(staging, card, split, config, rungs)
    if path is not None:
        files = {**files, INT8_FILENAME: {"precision": "int8"}}
    else:
        log.warning("int8 refused: %s", section["reason"])
    report["int8"] = section
    return card.updated(export={"int8": section}), files
