"""``imgcls models --benchmark``: ONNX Runtime latency and throughput of each zoo architecture on
this machine, fp32 and INT8, cached per machine so later listings show them.

The machine key is the CPU model and its vector features, the ONNX Runtime version, the device
(and GPU name) and the intra-op threads: a figure measured elsewhere is never shown as this
machine's. Sessions are ``imgcls.service.runtime`` sessions, exactly as the server makes them.
fp32 and INT8 run in alternating rounds on the same input (fair on a shared machine), after one
warm-up run each, for at most ``max_seconds`` per model (at least ``MIN_RUNS`` runs each).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from imgcls.models.core.atomic import write_atomically
from imgcls.models.core.verified import cache_dir

log = logging.getLogger(__name__)

MIN_RUNS = 3
FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
         "asimd", "asimddp", "sve")


@dataclass(frozen=True)
class BenchConfig:
    cache: Path
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8)
    max_seconds: float = 20.0  # timing budget per model (fp32 and INT8 together, all batches)
    int8: bool = True
    threads: int | None = None  # None: every CPU this process may use
    progress: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batches}")
        if self.max_seconds <= 0:
            raise ValueError(f"the time cap per model must be positive, got {self.max_seconds}")

    def runtime(self):
        from imgcls.service.runtime import RuntimeConfig

        return RuntimeConfig(device=self.device, threads=self.threads)


def cache_root(override: str | Path | None = None) -> Path:
    """``override``, else imgcls's cache folder (``$IMGCLS_CACHE_DIR``, ``$XDG_CACHE_HOME/imgcls``, ``~/.cache/imgcls``)."""
    return Path(override) if override else cache_dir()


def _cpu() -> tuple[str, list[str]]:
    from imgcls.models.core.cpu import cpu_flags, cpu_model

    return cpu_model(), sorted(cpu_flags() & set(FLAGS))


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
    return out.strip().splitlines()[0] if out.strip() else "unknown GPU"


def machine(config: BenchConfig) -> dict[str, Any]:
    """What the figures depend on: CPU model + features, ORT version, device, threads."""
    import onnxruntime

    cpu, flags = _cpu()
    info = {"cpu": cpu, "cpu_flags": flags, "platform": platform.machine(), "onnxruntime": onnxruntime.__version__,
            "device": config.device, "threads": config.runtime().intra_op_threads()}
    if config.device == "cuda":
        info["gpu"] = _gpu_name()
    return info


def machine_key(info: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def results_path(config: BenchConfig) -> Path:
    return config.cache / "bench" / f"{machine_key(machine(config))}.json"


def load_results(config: BenchConfig) -> dict[str, Any]:
    """This machine's cache: ``{"machine": {...}, "models": {arch: entry}}`` (empty if none)."""
    try:
        data = json.loads(results_path(config).read_text())
    except (OSError, ValueError):
        return {"machine": machine(config), "models": {}}
    return data if isinstance(data.get("models"), dict) else {"machine": machine(config), "models": {}}


def time_interleaved(sessions: Mapping[str, Any], pixels: np.ndarray, seconds: float,
                     threads: int) -> dict[str, dict[str, float]]:
    """Latency (ms) and images/s of each session on ``pixels``, in alternating rounds."""
    from imgcls.export.config import INPUT_NAME

    inputs = {INPUT_NAME: pixels}
    for sess in sessions.values():
        sess.run(None, inputs)  # warm-up: allocations, kernel selection
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, float] = {name: 0.0 for name in sessions}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(s) for s in samples.values()) < MIN_RUNS:
        for name, sess in sessions.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            sess.run(None, inputs)
            samples[name].append(time.perf_counter() - started)
            cpu[name] += time.process_time() - started_cpu
    return {name: _summary(times, cpu[name], len(pixels), threads) for name, times in samples.items()}


def _summary(times: list[float], cpu_seconds: float, batch: int, threads: int) -> dict[str, float]:
    """Latency percentiles, throughput at the median, and the share of the CPUs asked for that the
    runs really got (well under 1: other processes competed, the figures are pessimistic)."""
    p50 = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
    return {"latency_ms_p50": round(1e3 * p50, 3), "latency_ms_p90": round(1e3 * p90, 3),
            "latency_ms_min": round(1e3 * min(times), 3), "images_per_s": round(batch / p50, 2), "runs": len(times),
            "cpu_share": round(cpu_seconds / (sum(times) * threads), 2)}


def agreement(sessions: Mapping[str, Any], pixels: np.ndarray) -> float:
    """Share of images where INT8's top-1 class equals fp32's."""
    from imgcls.export.validate import run_batches

    top1 = {name: run_batches(sess, pixels, 8).argmax(1) for name, sess in sessions.items()}
    return float(np.mean(top1["fp32"] == top1["int8"]))


def edge_verdict(entry: Mapping[str, Any]) -> dict[str, Any]:
    """INT8-friendly when INT8 is faster and its top-1 disagreement with fp32 (an upper bound on the
    accuracy it loses) is within the export gate's allowed drop; unknown without real weights."""
    from imgcls.export.config import ExportConfig

    if not entry.get("int8"):
        return {"int8_friendly": None, "summary": "unknown (INT8 not measured)"}
    largest = str(max(int(b) for b in entry["fp32"]))
    speedup = entry["int8"][largest]["images_per_s"] / entry["fp32"][largest]["images_per_s"]
    if entry["weights"] != "imagenet":
        return {"int8_friendly": None, "int8_speedup": round(speedup, 3),
                "summary": f"INT8 x{speedup:.2f} speed; accuracy unknown (random init)"}
    agree = entry["int8_top1_agreement"]
    allowed = ExportConfig().max_accuracy_drop
    friendly = speedup > 1.0 and 100.0 * (1.0 - agree) <= allowed
    return {"int8_friendly": friendly, "int8_speedup": round(speedup, 3), "allowed_drop_points": allowed,
            "summary": f"{'yes' if friendly else 'no'}: INT8 x{speedup:.2f} speed, {100 * agree:.0f}% top-1 agreement"}


def measure(arch: str, config: BenchConfig) -> dict[str, Any]:
    """Export (or reuse) ``arch`` and time it: one cache entry."""
    from imgcls.export.images import load_pixels
    from imgcls.model_bench_export import photo_split, prepare
    from imgcls.models.zoo.registry import default_preprocess
    from imgcls.service.runtime import create_session

    started = time.perf_counter()
    models = prepare(arch, config.cache, int8=config.int8)
    paths = {"fp32": models.fp32, **({"int8": models.int8} if models.int8 else {})}
    sessions, provider = {}, ""
    for name, path in paths.items():
        sessions[name], provider = create_session(path, config.runtime())
    preprocess = default_preprocess(arch)
    split = photo_split(config.cache)
    images = load_pixels(split, list(split.val) + list(split.train), preprocess).pixels
    per_batch, threads = config.max_seconds / len(config.batches), config.runtime().intra_op_threads()
    timed: dict[str, dict[str, Any]] = {name: {} for name in sessions}
    for batch in config.batches:
        pixels = np.resize(images, (batch, *images.shape[1:]))
        for name, figures in time_interleaved(sessions, pixels, per_batch, threads).items():
            timed[name][str(batch)] = figures
    entry: dict[str, Any] = {
        "arch": arch, "weights": models.weights, "provider": provider, "fp32": timed["fp32"],
        "int8": timed.get("int8"), "int8_settings": models.int8_settings,
        "fp32_bytes": models.fp32.stat().st_size, "int8_bytes": models.int8.stat().st_size if models.int8 else None,
        "prepare_seconds": round(models.prepare_seconds, 1), "load_avg_1m": round(os.getloadavg()[0], 2),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "int8" in sessions:
        val = load_pixels(split, split.val, preprocess).pixels
        entry["int8_top1_agreement"] = agreement(sessions, val)
        entry["agreement_images"] = int(len(val))
    entry["edge"] = edge_verdict(entry)
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def benchmark(archs: Iterable[str], config: BenchConfig) -> dict[str, Any]:
    """Measure ``archs`` one after another, saving the cache after each (an interruption keeps the rest)."""
    from tqdm import tqdm

    from imgcls.export.errors import ExportError
    from imgcls.service.runtime import DeviceError, cuda_in_build

    if config.device == "cuda" and not cuda_in_build():  # say so before exporting anything
        raise DeviceError("--device cuda: this onnxruntime build has no CUDAExecutionProvider; "
                          "install the serve-gpu extra (onnxruntime-gpu) in its own environment")
    archs = list(archs)
    results = load_results(config)
    path = results_path(config)
    bar = tqdm(archs, desc="benchmark", unit="model", disable=not (config.progress and sys.stderr.isatty()))
    for index, arch in enumerate(bar, 1):
        bar.set_description(f"benchmark {arch}")
        log.info("[%d/%d] %s: export (cached after the first run) and time on %s", index, len(archs), arch,
                 config.device)
        try:
            entry = measure(arch, config)
        except ExportError as exc:  # one architecture that does not export must not lose the others
            log.error("[%d/%d] %s: not measured: %s", index, len(archs), arch, exc)
            continue
        results["models"][arch] = entry
        write_atomically(path, json.dumps(results, indent=1).encode("utf-8"))
        log.info("[%d/%d] %s: fp32 %s ms at batch %s, %s (%.0f s)", index, len(archs), arch,
                 entry["fp32"][str(min(config.batches))]["latency_ms_p50"], min(config.batches),
                 entry["edge"]["summary"], entry["seconds"])
    bar.close()
    return results
