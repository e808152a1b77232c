"""Shared pieces of the benchmark scripts: machine description, repeated timing, JSON + markdown out."""
from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    from imgcls.models.core.cpu import VNNI_FLAGS, cpu_flags, cpu_model

    flags = cpu_flags()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "vnni": bool(VNNI_FLAGS & flags),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float

    def as_dict(self) -> dict[str, float]:
        return {"median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s}


def time_repeated(work: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return Timing(statistics.median(samples), min(samples), max(samples))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def portable(value: Any) -> Any:
    """``value`` with this machine's absolute paths made relative (repository) or generic (temp, home):
    committed results must not name the machine's folders."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str):
        for prefix, name in ((str(REPO_ROOT), "."), (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")):
            value = value.replace(prefix + "/", name + "/").replace(prefix, name)
    return value


def write_result(out: Path | None, name: str, result: dict[str, Any]) -> None:
    payload = portable({"benchmark": name, "machine": machine(), **result})
    text = json.dumps(payload, indent=2)
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


def time_interleaved(works: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     rest_s: float = 0.0) -> dict[str, Timing]:
    """Time several alternatives in alternating rounds, so a noisy neighbour hurts them alike.

    ``rest_s`` pauses before each run, letting spinning runtime threads of the previous one go idle.
    """
    for _ in range(warmup):
        for work in works.values():
            work()
    samples: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            time.sleep(rest_s)
            started = time.perf_counter()
            work()
            samples[name].append(time.perf_counter() - started)
    return {name: Timing(statistics.median(s), min(s), max(s)) for name, s in samples.items()}


def rate(count: int, timing: Timing) -> dict[str, float]:
    """Items per second of a timing that processed ``count`` items: median and range."""
    return {"median": count / timing.median_s, "min": count / timing.max_s, "max": count / timing.min_s}


def summary_row(item: str, model: str, figure: str, value: float | str, baseline: str = "",
                ratio: float | None = None, goal: str = "", met: bool | None = None) -> dict[str, Any]:
    """One row of RESULTS.md: what was measured, against what, and whether the goal is met."""
    return {"item": item, "model": model, "figure": figure, "value": value, "baseline": baseline,
            "ratio": ratio, "goal": goal, "met": met}


def time_blocks(works: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                rest_s: float = 0.3) -> dict[str, Timing]:
    """Time alternatives one block after another, resting between blocks.

    For runtimes whose idle threads spin (ONNX Runtime, OpenMP): alternating single runs would
    charge one runtime's spinning threads to the other's timing.
    """
    timings = {}
    for name, work in works.items():
        time.sleep(rest_s)
        timings[name] = time_repeated(work, repeats, warmup)
    return timings


def setup_logging() -> None:
    """Our progress lines at INFO; everyone else's (exporters, HTTP clients) at WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bench").setLevel(logging.INFO)


def stop_group(process: subprocess.Popen, wait_s: float = 20.0) -> int:
    """SIGTERM ``process``'s group (a server's binary and workers, a benchmark and what it started),
    SIGKILL if it lingers, then SIGKILL any straggler of the group; the leader's exit status."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # stragglers of the group (a worker that outlived its parent)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return process.wait()
