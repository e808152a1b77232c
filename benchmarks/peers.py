"""Issue 17: imgcls against Triton (PyTriton), LitServe and mosec: same model, same JPEGs, same work.

    .venv/bin/python -m benchmarks.peers --out benchmarks/results/peers.json   (make bench-peers)

Every server classifies with ONNX Runtime on the same ``model.onnx`` (MobileNet-v2 speed bundle),
decodes with our ``Preprocess`` and answers the top 5; each peer runs in its own venv
(``benchmarks.peer_env``) and in the configuration its docs recommend (``benchmarks.peer_apps``).
For each peer a small grid (instances/workers x batching on/off) is measured alone at
``--grid-clients`` clients. Then imgcls with its defaults (``/classify`` raw JPEG, and ``/v2`` with
Triton's exact OIP request when that route exists), each ``--imgcls-variants`` and every peer's best
configuration are started one after another (each ready before the next starts) and measured at
``--levels`` clients in interleaved rounds (A B C D, A B C D, ...), so the load of a shared machine
falls on all of them alike; the idle ones wait meanwhile. The same bounded load generator cycles
through the same JPEG set (several sizes up to camera resolution). Start-to-ready is process start
to the first answered classification; memory the summed peak RSS of the server's process tree.
Goal: imgcls >= 1.0x the best peer's req/s at 16 clients with p99 no worse. Over gRPC too
(``benchmarks.peers_grpc``): imgcls ``--grpc-port`` against Triton's best configuration's gRPC
endpoint, 16 clients, interleaved rounds; ``--grpc-only`` measures that point alone (Triton's best
configuration from the ``--out`` file's grid) and writes it into that file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import bentoml_floor, fixtures, peer_env, peers_grpc, peers_start, peers_verdict
from benchmarks.http_load import drive
from benchmarks.loadgen import LoadResult, Request, rounds_summary
from benchmarks.peer_apps.settings import PeerSettings
from benchmarks.peer_servers import (HOST, OIP_MODEL, PEERS, cpu_seconds, oip_request, peak_rss, post, raw_request,
                                     start_peer, triton_request, wait_ready)
from benchmarks.report import setup_logging, write_result

log = logging.getLogger("bench.peers")
GRIDS: dict[str, list[dict[str, Any]]] = {
    "triton": [{"instances": i, "batching": b} for i in (1, 2) for b in (True, False)],
    "litserve": [{"instances": i, "batching": b} for i in (1, 2) for b in (True, False)],
    "mosec": [{"decode_workers": d, "batching": b} for d in (1, 2) for b in (True, False)],
}
JPEG_SET = (("coffee", 600), ("chelsea", 640), ("astronaut", 1280), ("rocket", 1920), ("cat", 4032),
            ("coffee", 4032))  # long side in px; 4032 = a 12 MP phone camera


def jpeg_set(folder: Path) -> list[tuple[str, bytes]]:
    """(description, bytes) for each JPEG of the set: scikit-image photos re-encoded at q90."""
    out = []
    for name, long_side in JPEG_SET:
        image = fixtures.photo(name)
        scale = long_side / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        out.append((f"{name} {size[0]}x{size[1]}", fixtures.jpeg_bytes(image, size)))
    return out


def warm(port: int, payloads: list[bytes]) -> None:
    drive(port, payloads, 4, 1.5, 100)  # connections, caches, lazy workers


def measure(port: int, requests: list[Request], levels: list[int], seconds: float, max_requests: int) -> list[dict]:
    """One server alone at each client count (the tuning grid)."""
    payloads = [r.encode(HOST, port) for r in requests]
    warm(port, payloads)
    out = []
    for clients in levels:
        summary = drive(port, payloads, clients, seconds, max_requests).summary()
        log.info("  c=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, statuses %s", clients, summary["throughput_rps"],
                 summary["p50_ms"], summary["p99_ms"], summary["statuses"])
        out.append(summary)
    return out


@dataclass(frozen=True)
class Contender:
    """One server (route) of the final, interleaved measurement; its levels go to ``record[field]``."""

    name: str
    port: int
    payloads: list[bytes]
    record: dict[str, Any]
    field: str


def interleaved(contenders: list[Contender], levels: list[int], seconds: float, rounds: int,
                max_requests: int) -> None:
    """Every contender at every client count, in alternating rounds (A B C .. A B C ..), so a noisy
    neighbour's load lands on all of them alike; each one's share is ``seconds`` per level."""
    for contender in contenders:
        warm(contender.port, contender.payloads)
        contender.record[contender.field] = []
    busy: dict[str, dict[int, float]] = {c.name: {} for c in contenders}  # CPU s per process under load
    for clients in levels:
        parts: dict[str, list[LoadResult]] = {c.name: [] for c in contenders}
        for _ in range(rounds):
            for c in contenders:
                before = cpu_seconds(c.record["pid"])
                parts[c.name].append(drive(c.port, c.payloads, clients, seconds / rounds, max_requests // rounds))
                for pid, used in cpu_seconds(c.record["pid"]).items():
                    busy[c.name][pid] = busy[c.name].get(pid, 0.0) + used - before.get(pid, 0.0)
        for c in contenders:
            summary = rounds_summary(parts[c.name])
            c.record[c.field].append(summary)
            log.info("%s c=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, statuses %s", c.name, clients,
                     summary["throughput_rps"], summary["p50_ms"], summary["p99_ms"], summary["statuses"])
    for c in contenders:  # which processes did the work: a worker left idle shows here
        c.record[f"{c.field}_cpu_s_by_process"] = sorted((round(v, 2) for v in busy[c.name].values()), reverse=True)


def top1(body: bytes) -> str | None:
    """The top-1 label of a JSON answer of any of the servers (the same-work check)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if "outputs" in data:  # OIP JSON output: labels as BYTES strings
        labels = next((o["data"] for o in data["outputs"] if o["name"] == "labels"), [None])
        return labels[0]
    predictions = data.get("predictions") or data.get("results", [{}])[0].get("predictions")
    return predictions[0]["label"] if predictions else None


def run_peer_config(name: str, env: peer_env.PeerEnv, settings: dict[str, Any], bundle: Path, jpegs: list[bytes],
                    levels: list[int], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    peer = PEERS[name]
    label = ", ".join(f"{k}={v}" for k, v in settings.items())
    log.info("%s (%s)", name, label)
    log_path = scratch / f"{name}-{len(list(scratch.glob(name + '*')))}.log"
    running = start_peer(peer, env, settings, bundle, log_path)
    try:
        full = running.settings
        ready_s = wait_ready(running, peer.build(jpegs[0], full), log_path)
        check = _same_work_request(name, jpegs, full)
        answers = [top1(post(running.port, r)[1]) for r in check]
        result = measure(running.port, [peer.build(j, full) for j in jpegs], levels, args.seconds, args.max_requests)
        memory = peak_rss(running.process.pid)
    finally:
        running.stop()
    return {"settings": settings, "label": label, "ready_s": ready_s, **memory,
            "top1": answers, "levels": result}


def _same_work_request(name: str, jpegs: list[bytes], settings: PeerSettings) -> list[Request]:
    if name == "triton":  # JSON outputs to read the labels back; the load uses binary outputs
        return [triton_request(j, settings, binary_output=False) for j in jpegs]
    return [PEERS[name].build(j, settings) for j in jpegs]


def run_grid(name: str, bundle: Path, jpegs: list[bytes], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The peer's tuning grid, one configuration at a time, at ``--grid-clients``; ``best_settings`` wins."""
    env = peer_env.ensure(name)
    grid = []
    for settings in GRIDS[name][: args.grid_limit or None]:
        try:
            grid.append(run_peer_config(name, env, settings, bundle, jpegs, [args.grid_clients], args, scratch))
        except RuntimeError as exc:
            log.warning("%s %s failed: %s", name, settings, exc)
            grid.append({"settings": settings, "error": str(exc)[-600:]})
    out: dict[str, Any] = {"interpreter": env.interpreter, "venv_built_s": env.built_s, "grid": grid}
    ok = [g for g in grid if "levels" in g]
    if ok:
        out["best_settings"] = max(ok, key=lambda g: g["levels"][0]["throughput_rps"])["settings"]
    else:
        out["error"] = "no configuration ran"
    return out


def start_best_peer(name: str, peer_result: dict[str, Any], bundle: Path, jpegs: list[bytes], scratch: Path,
                    running: list[Any]) -> Contender:
    """Start the peer's best configuration for the final phase (appended to ``running``)."""
    peer, settings = PEERS[name], peer_result["best_settings"]
    log_path = scratch / f"{name}-final.log"
    server = start_peer(peer, peer_env.ensure(name), settings, bundle, log_path)
    running.append(server)
    ready_s = wait_ready(server, peer.build(jpegs[0], server.settings), log_path)
    answers = [top1(post(server.port, r)[1]) for r in _same_work_request(name, jpegs, server.settings)]
    record = {"settings": settings, "label": ", ".join(f"{k}={v}" for k, v in settings.items()),
              "ready_s": ready_s, "top1": answers, "pid": server.process.pid}
    peer_result["best"] = record
    payloads = [peer.build(j, server.settings).encode(HOST, server.port) for j in jpegs]
    return Contender(name, server.port, payloads, record, "levels")


def default_workers() -> int:
    """The worker processes ``imgcls serve`` starts by default on this machine's CPUs."""
    from imgcls.service.host.config import ServiceConfig

    return ServiceConfig().with_workers_resolved(on_gpu=False).workers


def server_time_split(port: int, jpegs: list[bytes], passes: int = 3) -> dict[str, float]:
    """Medians over sequential /classify requests: the client's latency beside the server's own timing
    (decode, queue, inference, total): the difference is HTTP, framework and response work."""
    samples: dict[str, list[float]] = {}
    for _ in range(passes):
        for jpeg in jpegs:
            started = time.perf_counter()
            status, body = post(port, raw_request("/classify", jpeg))
            if status != 200:
                continue
            timing = {**json.loads(body)["timing"], "client_ms": (time.perf_counter() - started) * 1e3}
            for key, value in timing.items():
                samples.setdefault(key, []).append(float(value))
    return {key: round(statistics.median(values), 2) for key, values in samples.items()}


def start_imgcls(bundle: Path, jpegs: list[bytes], scratch: Path, serve_args: tuple[str, ...],
                 running: list[Any]) -> tuple[dict[str, Any], list[Contender]]:
    """Start ``imgcls serve`` (defaults unless ``serve_args``): its record and its contenders, /classify
    (raw JPEG) and, when the route exists, /v2 with Triton's request."""
    from imgcls.service.host.launcher import http_status, start_server

    log_name = "imgcls" + "".join(serve_args).replace("-", "_") + ".log"
    # the /v2 model name Triton's request uses, whatever the bundle's folder is called
    server = start_server(bundle, scratch / log_name, args=[*serve_args, "--model-name", OIP_MODEL], ready_timeout=180)
    running.append(server)
    port = int(server.url.rsplit(":", 1)[1])
    status, _ = post(port, raw_request("/classify", jpegs[0]))
    ready_s = time.monotonic() - server.started_at  # process start to the first classification, as for peers
    if status != 200:
        raise RuntimeError(f"imgcls /classify answered {status}")
    label = " ".join(serve_args) or f"defaults ({default_workers()} worker(s), micro-batching)"
    record: dict[str, Any] = {"config": f"imgcls serve {label}", "ready_s": ready_s, "pid": server.process.pid,
                              "top1": [top1(post(port, raw_request("/classify", j))[1]) for j in jpegs], "v2": None,
                              "one_at_a_time_ms": server_time_split(port, jpegs)}
    name = "imgcls" + (f" {label}" if serve_args else "")
    contenders = [Contender(f"{name} /classify", port, [raw_request("/classify", j).encode(HOST, port) for j in jpegs],
                            record, "classify")]
    infer = f"/v2/models/{OIP_MODEL}/infer"
    if http_status(server.url + "/v2/health/ready") == 200 and post(port, oip_request(infer, jpegs[0], (1,)))[0] == 200:
        contenders.append(Contender(f"{name} /v2", port, [oip_request(infer, j, (1,)).encode(HOST, port)
                                                          for j in jpegs], record, "v2"))
    else:
        log.info("%s /v2: not available in this build (GET /v2/health/ready is not 200)", name)
    return record, contenders


def start_contenders(results: dict[str, Any], bundle: Path, jpeg: bytes) -> dict[str, peers_start.Start]:
    starts = {"imgcls": peers_start.imgcls_start(bundle, jpeg), "bentoml_floor": peers_start.floor_start(default_workers())}
    for name, peer_result in results["peers"].items():
        if "best" in peer_result:
            starts[name] = peers_start.peer_start(name, peer_result["best_settings"], bundle, jpeg)
    return starts


def run_final(results: dict[str, Any], bundle: Path, jpegs: list[bytes], args: argparse.Namespace,
              scratch: Path) -> None:
    """Start imgcls (defaults, then each variant) and every peer's best, one after another (each ready
    before the next starts), then measure them all interleaved; peak RSS after; stop them all."""
    running: list[Any] = []
    try:
        results["imgcls"], contenders = start_imgcls(bundle, jpegs, scratch, (), running)
        results["imgcls_variants"] = []
        for variant in args.imgcls_variants:
            record, more = start_imgcls(bundle, jpegs, scratch, tuple(variant.split()), running)
            results["imgcls_variants"].append(record)
            contenders += more
        for name, peer_result in results["peers"].items():
            if "best_settings" in peer_result:
                contenders.append(start_best_peer(name, peer_result, bundle, jpegs, scratch, running))
        interleaved(contenders, args.levels, args.seconds, args.rounds, args.max_requests)
        for record in {id(c.record): c.record for c in contenders}.values():
            record.update(peak_rss(record.pop("pid")))  # the total, and e.g. one inference worker's share
    finally:
        codes = [server.stop() for server in running]
    results["imgcls"]["exit_code"] = codes[0] if codes else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="clients, best configs")
    parser.add_argument("--grid-clients", type=int, default=16, help="clients while tuning the grid")
    parser.add_argument("--grid-limit", type=int, default=0, help="first N configs of each grid (0: all)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured point and server")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the final seconds are split into")
    parser.add_argument("--max-requests", type=int, default=3000, help="per measured point")
    parser.add_argument("--imgcls-variants", nargs="*", default=["--workers 1", "--max-batch-size 1"],
                        help="imgcls serve arguments measured too, beside the defaults")
    parser.add_argument("--start-repeats", type=int, default=3,
                        help="cold starts of each server, alone, for start-to-ready (0: the final phase's figure)")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grpc-only", action="store_true",
                        help="measure only the gRPC point (imgcls vs Triton's best configuration recorded in --out) "
                             "and write it into --out, keeping the rest of that result")
    args = parser.parse_args(argv)
    setup_logging()
    # The servers run in their own sessions: a SIGTERM (run_all's timeout, Ctrl-C's cousin) must unwind
    # through the ``finally`` blocks that stop them, not leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.grpc_only:
        return grpc_only(args)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    prepared = fixtures.speed_bundle(args.arch, args.workdir)
    with tempfile.TemporaryDirectory(prefix="imgcls-peers-") as folder:
        scratch = Path(folder)
        described = jpeg_set(scratch)
        jpegs = [data for _, data in described]
        results: dict[str, Any] = {"arch": args.arch, "weights": prepared.recipe["weights"],
                                   "jpegs": [{"image": d, "bytes": len(b)} for d, b in described], "peers": {}}
        for name in args.peers:
            results["peers"][name] = run_grid(name, prepared.bundle_dir, jpegs, args, scratch)
        run_final(results, prepared.bundle_dir, jpegs, args, scratch)
        if "triton" in args.peers and "best_settings" in results["peers"]["triton"]:
            results["grpc"] = peers_grpc.run(results["peers"]["triton"]["best_settings"], prepared.bundle_dir, jpegs,
                                             args, scratch)
        results["bentoml_floor"] = bentoml_floor.measure(default_workers())  # what the framework costs alone
        if args.start_repeats:
            peers_start.apply(results, peers_start.measure(start_contenders(results, prepared.bundle_dir, jpegs[0]),
                                                           scratch, args.start_repeats))
    results["comparison"] = peers_verdict.compare(results)
    results["summary"] = peers_verdict.summary(results)
    results["settings"] = {"levels": args.levels, "grid_clients": args.grid_clients, "seconds": args.seconds,
                           "rounds": args.rounds, "max_requests": args.max_requests, "machine_shared": True}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average"] = {"start": load_at_start, "end": os.getloadavg()[0]}
    write_result(args.out, "peers", results)
    log.info("peers benchmark: %.0f s", results["seconds"])
    return 0


def grpc_only(args: argparse.Namespace) -> int:
    """The gRPC point alone, with Triton's best configuration from the ``--out`` result, written back into it."""
    if args.out is None or not args.out.is_file():
        log.error("--grpc-only needs --out: an existing peers result (its Triton grid picks the configuration)")
        return 2
    results = json.loads(args.out.read_text())
    settings = results.get("peers", {}).get("triton", {}).get("best_settings")
    if settings is None:
        log.error("%s has no best Triton configuration: run the whole benchmark first", args.out)
        return 2
    prepared = fixtures.speed_bundle(args.arch, args.workdir)
    with tempfile.TemporaryDirectory(prefix="imgcls-peers-grpc-") as folder:
        jpegs = [data for _, data in jpeg_set(Path(folder))]
        results["grpc"] = peers_grpc.run(settings, prepared.bundle_dir, jpegs, args, Path(folder))
    results["summary"] = peers_verdict.summary(results)
    write_result(args.out, "peers", {k: v for k, v in results.items() if k != "benchmark"})
    log.info("peers gRPC point: %.0f s measured", results["grpc"]["measured_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
