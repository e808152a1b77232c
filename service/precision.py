"""Which ONNX file of a bundle to serve: ``auto`` picks the fastest variant that passed its gate here.

The one place a precision is chosen (``Predictor.load`` calls ``choose``; ``imgcls serve`` and the
engine pass ``auto`` by default). On a GPU: ``model.fp16.onnx`` when its gate passed, else fp32.
On a CPU: ``model.int8.onnx`` only when its gate passed and it runs faster than fp32 on a CPU of
this kind (``imgcls.models.core.cpu``: ``vnni``, ``x86`` without VNNI, ``arm64``), else fp32.
Never a U8S8 or S8S8 INT8 file (``export.int8.int8_format``) on x86 without VNNI: ONNX Runtime's
kernels for those saturate there (answers differ from the gate's), however fast they run.

The INT8 speed figure comes from the card (``export.int8.speed``, timed by the export's gate, used
when the exporting CPU was of this kind; older cards: ``export.int8.gate.speed_ratio`` with
``gated_on``). When the card has none for this kind, both files are timed here once, a few
alternating batches of one shape on the CPU provider, and the figure is cached in imgcls's cache
folder (``precision-speed.json``, keyed by both files' sha256 and this CPU's ISA), so a server's
workers and later starts reuse it. An explicit ``int8`` that is slower here is served as asked,
with a warning, and so is one that saturates here. Every choice comes with one line saying what is served and why.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from imgcls.models.core import bundle as bundle_checks
from imgcls.models.core.atomic import write_atomically
from imgcls.models.core.bundle import BundleError
from imgcls.models.core.card import ModelCard
from imgcls.models.core.cpu import CpuKind, kind_of_isa, local_cpu
from imgcls.models.core.verified import cache_dir
from imgcls.service.runtime import RuntimeConfig, create_session

log = logging.getLogger(__name__)

AUTO = "auto"
CHOICES = (AUTO, "fp32", "int8", "fp16")
SPEED_CACHE = "precision-speed.json"
MEASURE_BATCH = 8
MEASURE_SECONDS = 0.5  # per file, after one warm-up run, at least MEASURE_ROUNDS runs each
MEASURE_ROUNDS = 3
MAX_CACHE_ENTRIES = 256
SATURATING_FORMATS = frozenset({"U8S8", "S8S8"})  # signed weights: pair sums overflow int16 without VNNI


@dataclass(frozen=True)
class SpeedFigure:
    ratio: float  # INT8 images/s over fp32 images/s on a CPU of this kind
    fmt: str  # U8U8 / U8S8 / S8S8 ... ("?" when the card does not say)
    source: str  # where the figure comes from, for the log line


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # the variant served: fp32 | int8 | fp16
    reason: str  # one line: what is served and why
    warn: bool = False  # an explicit choice that runs slower than fp32 here


def choose(bundle_dir: Path, card: ModelCard, requested: str, runtime: RuntimeConfig,
           on_gpu: bool, cpu: CpuKind | None = None) -> PrecisionChoice:
    """The variant to load for ``requested`` (``auto`` or an explicit precision) and why."""
    if requested not in CHOICES:
        raise BundleError(f"precision must be one of {CHOICES}, got {requested!r}")
    if requested == AUTO and on_gpu:
        return _on_gpu(bundle_dir, card)
    cpu = cpu or local_cpu()
    if requested == AUTO:
        return _on_cpu(bundle_dir, card, runtime, cpu)
    if requested == "int8" and not on_gpu and _variant_state(bundle_dir, card, "int8") is None:
        saturates = _saturation(card, cpu)
        if saturates:
            return PrecisionChoice("int8", f"serving int8 as asked, but {saturates}: answers may differ from "
                                           "the gate's; --precision auto would serve fp32 here", warn=True)
        speed = int8_speed(bundle_dir, card, runtime, cpu)
        if speed.ratio < 1.0:
            return PrecisionChoice("int8", f"serving int8 as asked, but {_speed_words(speed, cpu)}: "
                                           "--precision auto would serve fp32 here", warn=True)
        return PrecisionChoice("int8", f"serving int8 as asked: {_speed_words(speed, cpu)}")
    return PrecisionChoice(requested, f"serving {requested} as asked")


def _on_gpu(bundle_dir: Path, card: ModelCard) -> PrecisionChoice:
    missing = _variant_state(bundle_dir, card, "fp16")
    if missing is None:
        return PrecisionChoice("fp16", "serving fp16: on a GPU, and its gate passed")
    return PrecisionChoice("fp32", f"serving fp32 on the GPU: {missing}")


def _on_cpu(bundle_dir: Path, card: ModelCard, runtime: RuntimeConfig, cpu: CpuKind) -> PrecisionChoice:
    missing = _variant_state(bundle_dir, card, "int8")
    if missing is not None:
        return PrecisionChoice("fp32", f"serving fp32: {missing}")
    saturates = _saturation(card, cpu)
    if saturates:
        return PrecisionChoice("fp32", f"serving fp32: {saturates}")
    speed = int8_speed(bundle_dir, card, runtime, cpu)
    if speed.ratio >= 1.0:
        return PrecisionChoice("int8", f"serving int8: {_speed_words(speed, cpu)}")
    return PrecisionChoice("fp32", f"serving fp32: {_speed_words(speed, cpu)}")


def kernel_format(card: ModelCard) -> str:
    """The INT8 file's kernel format (``U8U8``, ``U8S8``, ``S8S8``; ``?`` when the card does not say).

    ``export.int8.int8_format``, else the format of its speed record; ``export.int8.format`` is the
    quantization format (``QDQ``), not this."""
    section = card.export.get("int8") or {}
    records = section.get("speed")
    speed_formats = [r.get("format") for r in (records if isinstance(records, list) else [records])
                     if isinstance(r, Mapping) and r.get("format")]
    return str(section.get("int8_format") or next(iter(speed_formats), None) or "?")


def _saturation(card: ModelCard, cpu: CpuKind) -> str | None:
    """Why the INT8 file's kernels saturate on ``cpu`` (U8S8/S8S8 on x86 without VNNI), else None."""
    fmt = kernel_format(card)
    if cpu.kind != "x86" or fmt.upper() not in SATURATING_FORMATS:
        return None
    return (f"the INT8 file's kernels are {fmt}, which saturate on this CPU ({cpu.words}; "
            "ONNX Runtime's signed-weight kernels need VNNI)")


def _speed_words(speed: SpeedFigure, cpu: CpuKind) -> str:
    return f"INT8 runs {speed.ratio:.2f}× fp32 on this CPU ({cpu.words}, {speed.fmt}; {speed.source})"


def _variant_state(bundle_dir: Path, card: ModelCard, precision: str) -> str | None:
    """None when the bundle holds ``precision`` and its gate passed; else why it cannot be served."""
    section = card.export.get(precision)
    name = precision.upper() if precision == "int8" else precision
    if not isinstance(section, Mapping):
        return f"the bundle has no {name} variant"
    if section.get("status") != "passed":
        return f"the bundle's {name} gate refused it ({_refusal(section, precision)})"
    try:
        bundle_checks.model_file(bundle_dir, card, precision)
    except BundleError as exc:
        return f"its {name} file is missing ({exc})"
    return None


def _refusal(section: Mapping[str, Any], precision: str) -> str:
    gate = section.get("gate") or {}
    try:
        return (f"top-1 {100 * gate[f'{precision}_top1']:.2f}% vs fp32 {100 * gate['fp32_top1']:.2f}%, "
                f"allowed drop {gate['max_accuracy_drop_points']:g} points")
    except (KeyError, TypeError, ValueError):
        return str(section.get("reason") or section.get("status") or "no reason recorded")[:200]


# ------------------------------------------------------------------ INT8 speed on this CPU's kind
def int8_speed(bundle_dir: Path, card: ModelCard, runtime: RuntimeConfig, cpu: CpuKind) -> SpeedFigure:
    """INT8's speed vs fp32 here: the card's figure for this CPU kind, else measured once (cached)."""
    return card_speed(card, cpu) or measured_speed(bundle_dir, card, runtime, cpu)


def card_speed(card: ModelCard, cpu: CpuKind) -> SpeedFigure | None:
    """The card's INT8 speed figure timed on a CPU of ``cpu``'s kind, or None."""
    section = card.export.get("int8") or {}
    fmt = kernel_format(card)
    records = section.get("speed")
    for record in records if isinstance(records, list) else [records]:
        if not isinstance(record, Mapping) or "ratio_vs_fp32" not in record:
            continue
        where = record.get("cpu") or {}
        kind = where.get("target") or kind_of_isa(str(where.get("isa", "")))
        if kind == cpu.kind:
            return SpeedFigure(float(record["ratio_vs_fp32"]), str(record.get("format") or fmt),
                               f"timed by the export on {where.get('model') or 'a CPU of this kind'}")
    gated_on, gate = section.get("gated_on") or {}, section.get("gate") or {}
    if "speed_ratio" in gate and gated_on.get("target") == cpu.kind:
        return SpeedFigure(float(gate["speed_ratio"]), fmt,
                           f"timed by the export's gate on {gated_on.get('model') or 'a CPU of this kind'}")
    return None


def measured_speed(bundle_dir: Path, card: ModelCard, runtime: RuntimeConfig, cpu: CpuKind) -> SpeedFigure:
    """Time fp32 and INT8 here (once per pair of files and ISA: cached in ``SPEED_CACHE``)."""
    paths = {p: bundle_checks.model_file(bundle_dir, card, p) for p in ("fp32", "int8")}
    digests = [str(card.lineage.get(f"sha256:{paths[p].name}", ""))[:16] for p in ("fp32", "int8")]
    key = f"{digests[0]}+{digests[1]}@{cpu.isa}"
    store = cache_dir() / SPEED_CACHE
    known = _read_cache(store)
    fmt = kernel_format(card)
    if key in known:
        return SpeedFigure(known[key]["ratio_vs_fp32"], fmt, f"timed here before, cached in {store}")
    started = time.perf_counter()
    speed = _time_files(paths, card.preprocess.crop_size, replace(runtime, device="cpu"))
    ratio = speed["int8"] / speed["fp32"]
    log.info("timed fp32 and INT8 of %s on this CPU (%s) in %.1f s: %.0f vs %.0f images/s at batch %d",
             bundle_dir, cpu.words, time.perf_counter() - started, speed["fp32"], speed["int8"], MEASURE_BATCH)
    known[key] = {"ratio_vs_fp32": round(ratio, 4), "fp32_images_per_s": round(speed["fp32"], 2),
                  "int8_images_per_s": round(speed["int8"], 2), "batch": MEASURE_BATCH, "kind": cpu.kind}
    try:
        write_atomically(store, json.dumps(dict(list(known.items())[-MAX_CACHE_ENTRIES:]), indent=1).encode())
    except OSError as exc:  # a read-only home only costs the next start another timing
        log.debug("cannot cache the INT8 timing in %s: %s", store, exc)
    return SpeedFigure(round(ratio, 4), fmt, "no figure for this CPU kind in the card: timed here at load")


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items()
            if isinstance(v, dict) and isinstance(v.get("ratio_vs_fp32"), (int, float)) and v["ratio_vs_fp32"] > 0}


def _time_files(paths: Mapping[str, Path], crop: int, runtime: RuntimeConfig) -> dict[str, float]:
    """Images/s of each file on the same uint8 batch, alternating rounds after one warm-up run each."""
    sessions = {name: create_session(path, runtime)[0] for name, path in paths.items()}
    pixels = np.random.default_rng(0).integers(0, 256, (MEASURE_BATCH, 3, crop, crop), dtype=np.uint8)
    feeds = {name: {s.get_inputs()[0].name: pixels} for name, s in sessions.items()}
    for name, session in sessions.items():
        session.run(None, feeds[name])
    elapsed = dict.fromkeys(sessions, 0.0)
    runs = dict.fromkeys(sessions, 0)
    deadline = time.perf_counter() + MEASURE_SECONDS * len(sessions)
    while time.perf_counter() < deadline or min(runs.values()) < MEASURE_ROUNDS:
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            elapsed[name] += time.perf_counter() - start
            runs[name] += 1
    return {name: MEASURE_BATCH * runs[name] / elapsed[name] for name in sessions}


__all__ = ["AUTO", "CHOICES", "PrecisionChoice", "SpeedFigure", "card_speed", "choose", "kernel_format", "int8_speed", "measured_speed"]
