"""``make bench``: every benchmark in one run, then ``benchmarks/RESULTS.md`` from their JSON.

Each benchmark runs as its own process (``python -m benchmarks.<name> --out DIR/<name>.json``),
one after the other, bounded by a timeout and stopped with its whole process group on timeout or
Ctrl-C; a failing one is recorded as failed and the others still run. Bundles are prepared once
(cached in ``--workdir``) before the first benchmark. The table is rendered from the JSON files,
so ``--render-only`` rebuilds it without measuring: it prints the table, and writes it only to an
explicit ``--markdown FILE`` (the tracked RESULTS.md is rewritten by a measuring run alone).

    .venv/bin/python -m benchmarks.run_all [--only ceiling scoring] [--skip train_cache]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import summaries
from benchmarks.fixtures import DEFAULT_WORKDIR, REPO_ROOT
from benchmarks.report import machine, portable, setup_logging, stop_group

log = logging.getLogger("bench.run_all")
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_MD = REPO_ROOT / "benchmarks" / "RESULTS.md"


@dataclass(frozen=True)
class Benchmark:
    name: str  # module benchmarks.<name>, JSON <name>.json
    item: str
    args: tuple[str, ...] = ()  # "{workdir}" is replaced by --workdir
    timeout_s: int = 300
    workdir: bool = True  # takes --workdir
    module: str = ""  # benchmarks.<module> when one script runs under two names (default: name)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("fixtures", "prepare bundles", timeout_s=900),
    Benchmark("ceiling", "1"),
    Benchmark("ort_vs_torch", "2"),
    Benchmark("predictor_throughput", "3", ("--images", "48", "--repeats", "3"), workdir=False),
    Benchmark("decode_draft", "4", ("--repeats", "5"), timeout_s=180, workdir=False),
    Benchmark("http_load", "5", ("--bundle", "{workdir}/speed-mobilenet_v2/bundle", "--seconds", "6",
                                 "--max-requests", "1500"), workdir=False),
    # The default above is one worker per usable core; one worker is the low-latency, low-memory choice.
    Benchmark("http_load_workers1", "5", ("--bundle", "{workdir}/speed-mobilenet_v2/bundle", "--seconds", "6",
                                          "--max-requests", "1500", "--workers", "1"), workdir=False,
              module="http_load"),
    Benchmark("http_vs_peer", "6", ("--seconds", "8"), timeout_s=420),
    Benchmark("int8", "7"),
    Benchmark("train_cache", "8", ("--per-class", "16", "--epochs", "4"), timeout_s=420, workdir=False),
    Benchmark("scoring", "9"),
    Benchmark("cold_start", "10", timeout_s=180),
    Benchmark("oip_load", "12", ("--bundle", "{workdir}/speed-mobilenet_v2/bundle", "--seconds", "12",
                                 "--rounds", "3"), workdir=False),
    # the same protocol over gRPC (ModelInfer, JPEG as BYTES) against /v2 binary over HTTP, 2 workers
    Benchmark("grpc_load", "27", ("--bundle", "{workdir}/speed-mobilenet_v2/bundle", "--seconds", "16",
                                  "--rounds", "4"), workdir=False),
    # ten models from one server, a model replaced under load, one model against the code before (92fba03);
    # the first run also trains and exports the ten models (about a minute each, cached in --workdir)
    Benchmark("many_models", "26", ("--seconds", "24", "--rounds", "6", "--start-repeats", "5"), timeout_s=1500),
    # --engine ray vs the single-process scorer: a batch job (1440 JPEGs) and a short one, where
    # the engine's fixed start-up shows.
    Benchmark("ray_scoring", "14", timeout_s=600),
    Benchmark("ray_scoring_short", "14", ("--images", "480"), module="ray_scoring"),
    # feature caching (ORT vs the predictor vs eager), then the whole demo with each stage's time
    Benchmark("fine_tune_loop", "15", timeout_s=1500, workdir=False),  # two whole demos + caching rounds
)


def run_one(bench: Benchmark, out_dir: Path, workdir: Path, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark process; its status (ok / failed / timeout / missing) and seconds."""
    module = bench.module or bench.name
    if not (REPO_ROOT / "benchmarks" / f"{module}.py").is_file():
        return {"status": "missing", "detail": f"benchmarks/{module}.py does not exist"}
    command = [sys.executable, "-m", f"benchmarks.{module}", "--out", str(out_dir / f"{bench.name}.json"),
               *(("--workdir", str(workdir)) if bench.workdir else ()),
               *(arg.format(workdir=workdir) for arg in bench.args)]
    log_path = log_dir / f"{bench.name}.log"
    log.info("%s (item %s): %s", bench.name, bench.item, " ".join(command[1:]))
    started = time.perf_counter()
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            code = process.wait(timeout=bench.timeout_s)
            status = "ok" if code == 0 else "failed"
            detail = f"exit status {code}"
        except subprocess.TimeoutExpired:
            status, detail = "timeout", f"stopped after {bench.timeout_s} s"
        finally:
            stop_group(process)
    seconds = time.perf_counter() - started
    if status != "ok":
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        detail += f": {tail[0][:200]} (log: {log_path})"
        log.warning("%s %s: %s", bench.name, status, detail)
    return {"status": status, "detail": detail, "seconds": round(seconds, 1)}


def load_results(out_dir: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for path in sorted(out_dir.glob("*.json")):
        if path.name == "run_all.json":
            continue
        try:
            results[path.stem] = json.loads(path.read_text())
        except ValueError:
            log.warning("%s is not JSON; left out of the table", path)
    return results


def render(out_dir: Path, run: dict[str, Any] | None = None) -> str:
    """RESULTS.md text from the JSON files in ``out_dir`` (and the run's statuses, if given)."""
    results = load_results(out_dir)
    run = run or (json.loads((out_dir / "run_all.json").read_text()) if (out_dir / "run_all.json").is_file() else {})
    return summaries.render_markdown(results, run, BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [b.name for b in BENCHMARKS]
    parser.add_argument("--only", nargs="+", choices=names, help="run just these")
    parser.add_argument("--skip", nargs="+", choices=names, default=[], help="run all but these")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="JSON per benchmark")
    parser.add_argument("--markdown", type=Path, default=None,
                        help=f"the combined table (default {DEFAULT_MD.relative_to(REPO_ROOT)}; with "
                        "--render-only: printed, written only to this file if given)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cached bundles and images")
    parser.add_argument("--render-only", action="store_true", help="rebuild the table from the JSON files")
    args = parser.parse_args(argv)
    setup_logging()
    if args.render_only:
        return _render_only(args.out_dir, args.markdown)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = args.workdir.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHMARKS if (not args.only or b.name in args.only) and b.name not in args.skip]
    started = time.perf_counter()
    statuses = {}
    for bench in chosen:
        statuses[bench.name] = run_one(bench, args.out_dir, args.workdir, log_dir)
    run = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "seconds": round(time.perf_counter() - started, 1), "statuses": statuses, "commit": _commit()}
    if args.only or args.skip:  # a partial run keeps the statuses of the earlier full run
        previous = args.out_dir / "run_all.json"
        if previous.is_file():
            earlier = json.loads(previous.read_text())
            run["statuses"] = {**earlier.get("statuses", {}), **statuses}
    (args.out_dir / "run_all.json").write_text(json.dumps(portable(run), indent=2) + "\n")
    log.info("all benchmarks: %.0f s", run["seconds"])
    markdown = args.markdown or DEFAULT_MD
    markdown.write_text(render(args.out_dir, run))
    log.info("wrote %s", markdown)
    failed = [n for n, s in run.get("statuses", {}).items() if s["status"] not in ("ok", "missing")]
    return 1 if failed else 0


def _render_only(out_dir: Path, markdown: Path | None) -> int:
    """Print the table from the JSON files; write it only where asked."""
    if not out_dir.is_dir():
        sys.stderr.write(f"run_all --render-only: {out_dir} does not exist (run a benchmark first)\n")
        return 2
    text = render(out_dir)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if markdown is not None:
        markdown.write_text(text)
        log.info("wrote %s", markdown)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
