"""Item 6: imgcls ``/classify`` vs TorchServe's default ``image_classifier`` on the same job.

Same checkpoint (MobileNet-v2, random-init backbone + head; TorchServe gets its state dict in a
model archive, imgcls the exported bundle), the same 600x400 JPEG posted raw as ``image/jpeg`` to
both, the same bounded keep-alive load generator on loopback at the same concurrencies. The two
servers run one after the other, never together. TorchServe runs in its best configuration
measured on this machine (2 workers, OMP_NUM_THREADS=1); imgcls with its defaults.
Goal: imgcls >= 2x TorchServe's throughput at equal or better p99.

    .venv/bin/python -m benchmarks.http_vs_peer --out benchmarks/results/http_vs_peer.json
"""
from __future__ import annotations

import argparse
import logging
import socket

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import fixtures, loadgen
from benchmarks.report import markdown_table, setup_logging, summary_row, write_result

log = logging.getLogger("bench.http_vs_peer")
HOST = "127.0.0.1"
GOAL = 2.0


def free_port_block(count: int = 3) -> int:
    """A port p with p .. p+count-1 free on loopback (TorchServe takes three consecutive ones here)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            holders = []
            for offset in range(count):
                sock = socket.socket()
                holders.append(sock)
                sock.bind((HOST, base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in holders:
                sock.close()
    raise RuntimeError("no block of free loopback ports")


def drive_levels(port: int, path: str, jpeg: bytes, levels: list[int], seconds: float,
                 max_requests: int) -> list[dict[str, Any]]:
    request = loadgen.Request("POST", path, jpeg, "image/jpeg")
    loadgen.run_load(HOST, port, request, 4, min(2.0, seconds), 100)  # warm connections, caches, workers
    out = []
    for concurrency in levels:
        summary = loadgen.run_load(HOST, port, request, concurrency, seconds, max_requests).summary()
        log.info("%s c=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, statuses %s", path, concurrency,
                 summary["throughput_rps"], summary["p50_ms"], summary["p99_ms"], summary["statuses"])
        out.append(summary)
    return out


def run_imgcls(bundle: Path, jpeg: bytes, scratch: Path, load: Callable[[int, str], list]) -> dict[str, Any]:
    from imgcls.service.host.launcher import start_server

    server = start_server(bundle, scratch / "imgcls.log", ready_timeout=120)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        levels = load(port, "/classify")
    finally:
        exit_code = server.stop()
    return {"config": "imgcls serve defaults (1 worker, ORT threads = usable CPUs, micro-batching)",
            "levels": levels, "exit_code": exit_code}


def run_torchserve(checkpoint: Path, jpeg: bytes, scratch: Path, load: Callable[[int, str], list]) -> dict[str, Any]:
    from benchmarks import torchserve_peer as peer

    started = time.perf_counter()
    peer.build_archive(checkpoint, scratch / "ts")
    config = peer.TorchServeConfig()
    port = free_port_block()
    server = peer.start(scratch / "ts", port, config)
    try:
        ready_s = peer.wait_until_answering(port, jpeg, server)
        levels = load(port, "/predictions/clf")
    finally:
        peer.stop(server)
    return {"config": f"TorchServe image_classifier, {config.workers} workers, OMP_NUM_THREADS={config.omp_threads}",
            "ready_s": ready_s, "setup_s": time.perf_counter() - started, "levels": levels}


def compare(ours: list[dict[str, Any]], peer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for a, b in zip(ours, peer):
        ratio = a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else float("inf")
        met = ratio >= GOAL and a["p99_ms"] <= b["p99_ms"]
        rows.append({"concurrency": a["concurrency"], "throughput_ratio": ratio,
                     "p99_imgcls_ms": a["p99_ms"], "p99_torchserve_ms": b["p99_ms"], "goal_met": met})
    return rows


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ours, peer = result["imgcls"]["levels"], result["torchserve"]["levels"]
    for cmp, a, b in zip(result["comparison"], ours, peer):
        rows.append(summary_row(
            "6 vs TorchServe", result["arch"], f"imgcls req/s, c={cmp['concurrency']} (p99 {a['p99_ms']:.0f} ms)",
            a["throughput_rps"], f"TorchServe {b['throughput_rps']:.3g} req/s (p99 {b['p99_ms']:.0f} ms)",
            cmp["throughput_ratio"], ">= 2x at <= p99", cmp["goal_met"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="per level and server")
    parser.add_argument("--max-requests", type=int, default=2000, help="per level and server")
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    prepared = fixtures.speed_bundle(args.arch, args.workdir)
    jpeg = fixtures.peer_jpeg()

    def load(port: int, path: str) -> list[dict[str, Any]]:
        return drive_levels(port, path, jpeg, args.concurrency, args.seconds, args.max_requests)

    with tempfile.TemporaryDirectory(prefix="imgcls-peer-") as scratch:
        ours = run_imgcls(prepared.bundle_dir, jpeg, Path(scratch), load)
        theirs = run_torchserve(prepared.run_dir / "checkpoint", jpeg, Path(scratch), load)
    result = {"arch": args.arch, "weights": prepared.recipe["weights"], "jpeg": "scikit-image coffee 600x400 q90",
              "body": "raw image/jpeg to both", "imgcls": ours, "torchserve": theirs,
              "comparison": compare(ours["levels"], theirs["levels"]),
              "seconds_per_level": args.seconds, "max_requests_per_level": args.max_requests}
    result["summary"] = summary(result)
    write_result(args.out, "http_vs_peer", result)
    print(markdown_table(
        ["concurrency", "imgcls req/s", "imgcls p99 ms", "TorchServe req/s", "TorchServe p99 ms", "ratio", "goal"],
        [[c["concurrency"], a["throughput_rps"], a["p99_ms"], b["throughput_rps"], b["p99_ms"], c["throughput_ratio"],
          "met" if c["goal_met"] else "missed"]
         for c, a, b in zip(result["comparison"], ours["levels"], theirs["levels"])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
