"""Item 10, cold start: process start -> ``/readyz`` 200 for ``imgcls serve`` (MobileNet-v2, CPU).

Each run spawns the real ``imgcls serve BUNDLE`` (the service tests' harness, which polls
``/livez`` and ``/readyz`` every 0.1 s from the spawn on), records when it first answers ready and
how long the first ``/classify`` then takes, and stops it (SIGTERM, then the process group).
Goal: ready within 10 s. Loopback only.

    .venv/bin/python -m benchmarks.cold_start --out benchmarks/results/cold_start.json
"""
from __future__ import annotations

import argparse
import logging
import statistics

import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.report import markdown_table, setup_logging, summary_row, write_result

log = logging.getLogger("bench.cold_start")
GOAL_S = 10.0


def first_classify_s(url: str, jpeg: bytes) -> float:
    request = urllib.request.Request(f"{url}/classify", data=jpeg, method="POST", headers={"Content-Type": "image/jpeg"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/classify answered {response.status}")
    return time.perf_counter() - started


def one_start(bundle: Path, jpeg: bytes, log_path: Path) -> dict[str, Any]:
    from imgcls.service.host.launcher import start_server

    server = start_server(bundle, log_path, ready_timeout=120)
    try:
        ready_s = next(t for t, _, ready in server.probes if ready == 200)
        first = first_classify_s(server.url, jpeg)
    finally:
        exit_code = server.stop()
    return {"ready_s": ready_s, "first_classify_s": first, "exit_code": exit_code}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--bundle", type=Path, help="serve this bundle instead of a prepared --arch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="tiny arch, one run (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.quick:
        args.arch, args.runs = "tiny", 1
    bundle = args.bundle or fixtures.speed_bundle(args.arch, args.workdir).bundle_dir
    jpeg = fixtures.peer_jpeg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="imgcls-cold-") as scratch:
        for i in range(args.runs):
            runs.append(one_start(bundle, jpeg, Path(scratch) / f"serve-{i}.log"))
            log.info("run %d: ready after %.2f s, first /classify %.0f ms", i + 1, runs[-1]["ready_s"],
                     runs[-1]["first_classify_s"] * 1e3)
    ready = [r["ready_s"] for r in runs]
    median = statistics.median(ready)
    result = {"arch": args.arch, "bundle": str(bundle), "runs": runs,
              "ready_s": {"median": median, "min": min(ready), "max": max(ready)},
              "goal_s": GOAL_S, "goal_met": median <= GOAL_S}
    result["summary"] = [summary_row("10 cold start", args.arch, "spawn -> /readyz 200 (s)", median,
                                     f"min {min(ready):.2f}, max {max(ready):.2f}, {args.runs} runs", None,
                                     f"<= {GOAL_S:g} s", median <= GOAL_S)]
    write_result(args.out, "cold_start", result)
    print(markdown_table(["run", "ready s", "first /classify ms"],
                         [[i + 1, r["ready_s"], r["first_classify_s"] * 1e3] for i, r in enumerate(runs)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
