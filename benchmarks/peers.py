"""Issue 17: imgcls against Triton (PyTriton), LitServe and mosec: same model, same JPEGs, same work.

    .venv/bin/python -m benchmarks.peers --out benchmarks/results/peers.json   (make bench-peers)

Every server classifies with ONNX Runtime on the same ``model.onnx`` (MobileNet-v2 speed bundle),
decodes with our ``Preprocess`` and answers the top 5; each peer runs in its own venv
(``benchmarks.peer_env``) and in the configuration its docs recommend (``benchmarks.peer_apps``).
For each peer a small grid (instances/workers x batching on/off) is measured at ``--grid-clients``
clients; its best configuration is then measured at ``--levels`` clients, as is imgcls with its
defaults (``/classify`` raw JPEG, and ``/v2`` with Triton's exact OIP request when that route
exists), all in this one run, one server at a time, with the same bounded load generator cycling
through the same JPEG set (several sizes up to camera resolution). Start-to-ready is process start
to the first answered classification; memory the summed peak RSS of the server's process tree.
Goal: imgcls >= 1.0x the best peer's req/s at 16 clients with p99 no worse.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures, peer_env
from benchmarks.http_load import drive
from benchmarks.loadgen import Request
from benchmarks.peer_apps.settings import PeerSettings
from benchmarks.peer_servers import (HOST, OIP_MODEL, PEERS, oip_request, peak_rss_mb, post, raw_request,
                                     start_peer, wait_ready)
from benchmarks.report import setup_logging, summary_row, write_result

log = logging.getLogger("bench.peers")
GOAL = 1.0
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


def measure(port: int, requests: list[Request], levels: list[int], seconds: float, max_requests: int) -> list[dict]:
    payloads = [r.encode(HOST, port) for r in requests]
    drive(port, payloads, 4, min(2.0, seconds), 100)  # connections, caches, lazy workers warm
    out = []
    for clients in levels:
        summary = drive(port, payloads, clients, seconds, max_requests).summary()
        log.info("  c=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, statuses %s", clients, summary["throughput_rps"],
                 summary["p50_ms"], summary["p99_ms"], summary["statuses"])
        out.append(summary)
    return out


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
        rss, processes = peak_rss_mb(running.process.pid)
    finally:
        running.stop()
    return {"settings": settings, "label": label, "ready_s": ready_s, "peak_rss_mb": rss, "processes": processes,
            "top1": answers, "levels": result}


def _same_work_request(name: str, jpegs: list[bytes], settings: PeerSettings) -> list[Request]:
    if name == "triton":  # JSON outputs to read the labels back; the load uses binary outputs
        from benchmarks.peer_servers import _triton_request

        return [_triton_request(j, settings, binary_output=False) for j in jpegs]
    return [PEERS[name].build(j, settings) for j in jpegs]


def run_peer(name: str, bundle: Path, jpegs: list[bytes], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    env = peer_env.ensure(name)
    grid = []
    for settings in GRIDS[name][: args.grid_limit or None]:
        try:
            grid.append(run_peer_config(name, env, settings, bundle, jpegs, [args.grid_clients], args, scratch))
        except RuntimeError as exc:
            log.warning("%s %s failed: %s", name, settings, exc)
            grid.append({"settings": settings, "error": str(exc)[-600:]})
    ok = [g for g in grid if "levels" in g]
    if not ok:
        return {"interpreter": env.interpreter, "venv_built_s": env.built_s, "grid": grid, "error": "no config ran"}
    best = max(ok, key=lambda g: g["levels"][0]["throughput_rps"])
    final = run_peer_config(name, env, best["settings"], bundle, jpegs, args.levels, args, scratch)
    return {"interpreter": env.interpreter, "venv_built_s": env.built_s, "grid": grid, "best": final}


def default_workers() -> int:
    """The worker processes ``imgcls serve`` starts by default on this machine's CPUs."""
    from imgcls.service.http.config import ServiceConfig

    return ServiceConfig().with_workers_resolved(on_gpu=False).workers


def run_imgcls(bundle: Path, jpegs: list[bytes], args: argparse.Namespace, scratch: Path,
               serve_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """imgcls serve (defaults unless ``serve_args``): /classify (raw JPEG) and, when the route exists, /v2
    (Triton's request)."""
    from imgcls.service.http.launcher import http_status, start_server

    server = start_server(bundle, scratch / f"imgcls{len(serve_args)}.log", args=serve_args, ready_timeout=180)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        status, _ = post(port, raw_request("/classify", jpegs[0]))
        ready_s = time.monotonic() - server.started_at  # process start to the first classification, as for peers
        if status != 200:
            raise RuntimeError(f"imgcls /classify answered {status}")
        answers = [top1(post(port, raw_request("/classify", j))[1]) for j in jpegs]
        label = " ".join(serve_args) or f"defaults ({default_workers()} worker(s), micro-batching)"
        out: dict[str, Any] = {"config": f"imgcls serve {label}",
                               "ready_s": ready_s, "top1": answers}
        log.info("imgcls /classify (%s)", label)
        out["classify"] = measure(port, [raw_request("/classify", j) for j in jpegs], args.levels, args.seconds,
                                  args.max_requests)
        infer = f"/v2/models/{OIP_MODEL}/infer"
        v2_ready = http_status(server.url + "/v2/health/ready") == 200
        if v2_ready and post(port, oip_request(infer, jpegs[0], (1,)))[0] == 200:
            log.info("imgcls /v2")
            out["v2"] = measure(port, [oip_request(infer, j, (1,)) for j in jpegs], args.levels, args.seconds,
                                args.max_requests)
        else:
            out["v2"] = None
            log.info("imgcls /v2: not available in this build (GET /v2/health/ready is not 200)")
        out["peak_rss_mb"], out["processes"] = peak_rss_mb(server.process.pid)
    finally:
        out_code = server.stop()
    out["exit_code"] = out_code
    return out


def best_levels(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per server, its levels (imgcls /classify and /v2 as two rows; peers their best configuration)."""
    rows = {"imgcls /classify": results["imgcls"]["classify"]}
    if results["imgcls"].get("v2"):
        rows["imgcls /v2"] = results["imgcls"]["v2"]
    for name, peer in results["peers"].items():
        if "best" in peer:
            rows[name] = peer["best"]["levels"]
    return rows


def at(levels: list[dict[str, Any]], clients: int) -> dict[str, Any] | None:
    return next((level for level in levels if level["concurrency"] == clients), None)


def compare(results: dict[str, Any], clients: int = 16) -> list[dict[str, Any]]:
    """imgcls (each route) against each peer's best at ``clients``: req/s ratio, p99s, goal vs the best peer."""
    rows = best_levels(results)
    peers = {n: at(v, clients) for n, v in rows.items() if not n.startswith("imgcls") and at(v, clients)}
    if not peers:
        return []
    strongest = max(peers, key=lambda n: peers[n]["throughput_rps"])
    out = []
    for route in ("imgcls /classify", "imgcls /v2"):
        ours = at(rows.get(route, []), clients)
        for name, theirs in peers.items():
            if ours is None:
                out.append({"route": route, "peer": name, "available": False, "strongest": name == strongest})
                continue
            ratio = ours["throughput_rps"] / theirs["throughput_rps"] if theirs["throughput_rps"] else float("inf")
            out.append({"route": route, "peer": name, "clients": clients, "throughput_ratio": ratio,
                        "imgcls_rps": ours["throughput_rps"], "peer_rps": theirs["throughput_rps"],
                        "p99_imgcls_ms": ours["p99_ms"], "p99_peer_ms": theirs["p99_ms"],
                        "strongest": name == strongest,
                        "goal_met": ratio >= GOAL and ours["p99_ms"] <= theirs["p99_ms"]})
    return out


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in results["comparison"]:
        if not c.get("available", True):
            if c["strongest"]:  # one row for the missing route, not one per peer
                rows.append(summary_row("17 peers", results["arch"], f"{c['route']}: not in this build "
                                        "(GET /v2/health/ready is not 200)", "-", goal=">= 1.0x strongest peer at c=16"))
            continue
        goal = c["strongest"]
        rows.append(summary_row(
            "17 peers", results["arch"], f"{c['route']} req/s, c={c['clients']} (p99 {c['p99_imgcls_ms']:.0f} ms)",
            c["imgcls_rps"], f"{c['peer']} best config {c['peer_rps']:.3g} req/s (p99 {c['p99_peer_ms']:.0f} ms)",
            c["throughput_ratio"], ">= 1.0x strongest peer at <= p99" if goal else "", c["goal_met"] if goal else None))
    ours = results["imgcls"]
    peers = {n: p["best"] for n, p in results["peers"].items() if "best" in p}
    if peers:
        fastest = min(peers, key=lambda n: peers[n]["ready_s"])
        smallest = min(peers, key=lambda n: peers[n]["peak_rss_mb"])
        rows.append(summary_row("17 peers", results["arch"], "start-to-ready s (first classification)", ours["ready_s"],
                                f"{fastest} {peers[fastest]['ready_s']:.3g} s (fastest peer)",
                                peers[fastest]["ready_s"] / ours["ready_s"], "<= fastest peer",
                                ours["ready_s"] <= peers[fastest]["ready_s"]))
        rows.append(summary_row("17 peers", results["arch"],
                                f"peak RSS MiB, server process tree ({ours['processes']} processes)",
                                ours["peak_rss_mb"], f"{smallest} {peers[smallest]['peak_rss_mb']:.0f} MiB "
                                f"({peers[smallest]['processes']} processes, smallest peer)",
                                peers[smallest]["peak_rss_mb"] / ours["peak_rss_mb"], "<= smallest peer",
                                ours["peak_rss_mb"] <= peers[smallest]["peak_rss_mb"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="clients, best configs")
    parser.add_argument("--grid-clients", type=int, default=16, help="clients while tuning the grid")
    parser.add_argument("--grid-limit", type=int, default=0, help="first N configs of each grid (0: all)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per measured point")
    parser.add_argument("--max-requests", type=int, default=3000, help="per measured point")
    parser.add_argument("--imgcls-variants", nargs="*", default=["--workers 1"],
                        help="imgcls serve arguments measured too (after the peers), beside the defaults")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    # The servers run in their own sessions: a SIGTERM (run_all's timeout, Ctrl-C's cousin) must unwind
    # through the ``finally`` blocks that stop them, not leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    prepared = fixtures.speed_bundle(args.arch, args.workdir)
    with tempfile.TemporaryDirectory(prefix="imgcls-peers-") as folder:
        scratch = Path(folder)
        described = jpeg_set(scratch)
        jpegs = [data for _, data in described]
        results: dict[str, Any] = {"arch": args.arch, "weights": prepared.recipe["weights"],
                                   "jpegs": [{"image": d, "bytes": len(b)} for d, b in described],
                                   "imgcls": run_imgcls(prepared.bundle_dir, jpegs, args, scratch), "peers": {}}
        for name in args.peers:
            results["peers"][name] = run_peer(name, prepared.bundle_dir, jpegs, args, scratch)
        results["imgcls_variants"] = [run_imgcls(prepared.bundle_dir, jpegs, args, scratch, tuple(v.split()))
                                      for v in args.imgcls_variants]
    results["comparison"] = compare(results)
    results["summary"] = summary(results)
    results["settings"] = {"levels": args.levels, "grid_clients": args.grid_clients, "seconds": args.seconds,
                           "max_requests": args.max_requests, "machine_shared": True}
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.out, "peers", results)
    log.info("peers benchmark: %.0f s", results["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
