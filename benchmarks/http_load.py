"""``POST /classify`` throughput and latency vs the in-process predictor on the same JPEGs.

    python -m benchmarks.http_load [--bundle DIR | --arch mobilenet_v2] [--workers N] --out .bench-out/http_load.json

Starts ``imgcls serve`` on a free loopback port (and stops it), measures the time to ``/readyz``,
then drives it with the low-CPU keep-alive load generator (``benchmarks.loadgen``) at each
concurrency, one JPEG per request, bounded by ``--seconds`` and ``--max-requests`` per level.
The baseline is ``Predictor.predict`` in this process on the same JPEG bytes (decode pool
overlapping batched inference), the best the predictor does without HTTP. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadResult, _client, check_loopback, multipart_request
from benchmarks.predictor_throughput import export_random_bundle, write_jpegs
from benchmarks.report import markdown_table, write_result

log = logging.getLogger("bench.http")
HOST = "127.0.0.1"


def in_process_rate(bundle: Path, jpegs: list[bytes], rounds: int, batch: int, workers: int) -> float:
    from imgcls.service.predictor import Predictor

    with Predictor.load(bundle, device="cpu", workers=1) as predictor:
        predictor.predict(jpegs[:batch], batch_size=batch)  # warm-up
        started = time.perf_counter()
        for _ in range(rounds):
            results = predictor.predict(jpegs, batch_size=batch)
        elapsed = time.perf_counter() - started
    assert all(isinstance(r, list) for r in results)
    return rounds * len(jpegs) / elapsed


def drive(port: int, payloads: list[bytes], concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """``concurrency`` keep-alive clients, client i sending JPEG i (mod the set)."""
    check_loopback(HOST)
    result = LoadResult(concurrency, 0.0)

    async def run_all() -> None:
        deadline = time.perf_counter() + seconds
        budget = [max_requests]
        await asyncio.gather(*(_client(HOST, port, payloads[i % len(payloads)], deadline, budget, result)
                               for i in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run_all())
    result.duration_s = time.perf_counter() - started
    return result


def bundle_and_jpegs(args: argparse.Namespace, work: Path) -> tuple[Path, list[bytes]]:
    """``--bundle`` (or a random-weights ``--arch`` exported into ``work``) and ``--images`` JPEGs of ``--size``."""
    bundle = args.bundle or export_random_bundle(args.arch, work)
    return bundle, [p.read_bytes() for p in write_jpegs(work / "jpegs", tuple(args.size), args.images)]


def start(bundle: Path, workers: int, log_path: Path, extra: list[str]) -> tuple[Any, int, float]:
    from imgcls.service.host.launcher import start_server

    started = time.monotonic()
    workers_flag = ["--workers", str(workers)] if workers else []  # 0: imgcls serve's own default (auto)
    server = start_server(bundle, log_path, args=[*workers_flag, *extra], ready_timeout=120)
    ready_s = next(t for t, _, ready in server.probes if ready == 200)
    port = int(server.url.rsplit(":", 1)[1])
    log.info("server ready %.2f s after spawn (%.2f s incl. harness)", ready_s, time.monotonic() - started)
    return server, port, ready_s


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="benchmarks.http_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: export a random-weights --arch)")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--workers", type=int, default=0, help="server worker processes (0: imgcls serve's default)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=3000, help="per concurrency level")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[600, 400])
    parser.add_argument("--serve-arg", action="append", default=[], help="extra imgcls serve flag (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="imgcls-http-bench-") as scratch:
        work = Path(scratch)
        bundle, jpegs = bundle_and_jpegs(args, work)
        baseline = in_process_rate(bundle, jpegs, rounds=4, batch=16, workers=args.workers)
        log.info("in-process predictor: %.1f img/s", baseline)
        payloads = [multipart_request("/classify", "images", [(f"{i}.jpg", data, "image/jpeg")]).encode(HOST, 0)
                    for i, data in enumerate(jpegs)]
        server, port, ready_s = start(bundle, args.workers, work / "serve.log", args.serve_arg)
        payloads = [p.replace(f"Host: {HOST}:0".encode(), f"Host: {HOST}:{port}".encode(), 1) for p in payloads]
        levels = []
        try:
            drive(port, payloads, 4, 1.0, 200)  # connections and caches warm
            for concurrency in args.concurrency:
                summary = drive(port, payloads, concurrency, args.seconds, args.max_requests).summary()
                summary["vs_in_process"] = summary["throughput_rps"] / baseline
                levels.append(summary)
                log.info("c=%d: %.1f req/s (%.2fx), p50 %.1f ms, p99 %.1f ms, statuses %s", concurrency,
                         summary["throughput_rps"], summary["vs_in_process"], summary["p50_ms"], summary["p99_ms"],
                         summary["statuses"])
        finally:
            exit_code = server.stop()
    rows = [[s["concurrency"], s["throughput_rps"], s["vs_in_process"], s["p50_ms"], s["p99_ms"], s["statuses"]]
            for s in levels]
    print(markdown_table(["concurrency", "req/s", "x in-process", "p50 ms", "p99 ms", "statuses"], rows))
    write_result(args.out, "http_load", {
        "bundle": str(args.bundle or args.arch), "workers": args.workers or "auto", "image_size": args.size,
        "in_process_img_per_s": baseline, "ready_s": ready_s, "server_exit_code": exit_code, "levels": levels,
        "serve_args": args.serve_arg,
    })
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
