"""The gRPC point of the peers benchmark: imgcls ``serve --grpc-port`` against Triton's own gRPC endpoint.

Triton (PyTriton's ``tritonserver``, the best configuration of its HTTP grid) listens for gRPC beside
HTTP; imgcls serves the same ``model.onnx`` with its defaults plus ``--grpc-port``. Both run side by
side (each ready before the next starts) and ``clients`` clients, each on its own channel and TCP
connection (``tritonclient.grpc`` clients in one process would share one: gRPC channels with the same
arguments share their connection), call
``inference.GRPCInferenceService/ModelInfer`` with one JPEG of the peers' set as a BYTES element in
``raw_input_contents`` (what tritonclient sends), the outputs left to each server's defaults, in
interleaved rounds (A B, A B, ...). Every answer must be OK; CPU seconds per process under load are
recorded as for HTTP.

    .venv/bin/python -m benchmarks.peers --grpc-only --out benchmarks/results/peers.json   (this point alone)
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import peer_env
from benchmarks.grpc_load import drive_grpc
from benchmarks.loadgen import LoadResult, rounds_summary
from benchmarks.peer_servers import HOST, OIP_MODEL, PEERS, cpu_seconds, peak_rss, start_peer, wait_ready
from benchmarks.report import machine
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb

log = logging.getLogger("bench.peers.grpc")
CLIENTS = 16


def model_infer(jpeg: bytes, shape: tuple[int, ...]) -> bytes:
    """A serialised ModelInferRequest for model ``bundle``: the JPEG as one BYTES element of input ``image``."""
    request = pb.ModelInferRequest(model_name=OIP_MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=list(shape))
    request.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
    return request.SerializeToString()


@dataclass(frozen=True)
class GrpcContender:
    name: str
    config: str
    target: str  # host:port
    messages: list[bytes]
    pid: int  # the root of the server's process tree


def check(contender: GrpcContender) -> None:
    """Every JPEG's message answers OK once (RuntimeError otherwise): the load measures answers, not errors."""
    result = drive_grpc(contender.target, contender.messages, len(contender.messages), 30.0, len(contender.messages))
    if set(result.statuses) != {200} or len(result.latencies_s) != len(contender.messages):
        raise RuntimeError(f"{contender.name} over gRPC answered {result.statuses}")


def measure(contenders: list[GrpcContender], clients: int, seconds: float, rounds: int,
            max_requests: int) -> dict[str, dict[str, Any]]:
    """Each contender warmed, then ``rounds`` rounds of each in turn; its summary, rounds and CPU per process."""
    for contender in contenders:
        check(contender)
        drive_grpc(contender.target, contender.messages, 4, 1.0, 100)
    parts: dict[str, list[LoadResult]] = {c.name: [] for c in contenders}
    busy: dict[str, dict[int, float]] = {c.name: {} for c in contenders}
    for index in range(rounds):
        for c in contenders:
            before = cpu_seconds(c.pid)
            parts[c.name].append(drive_grpc(c.target, c.messages, clients, seconds / rounds, max_requests // rounds))
            for pid, used in cpu_seconds(c.pid).items():
                busy[c.name][pid] = busy[c.name].get(pid, 0.0) + used - before.get(pid, 0.0)
            log.info("gRPC round %d %s: %.1f req/s", index + 1, c.name, parts[c.name][-1].summary()["throughput_rps"])
    out = {}
    for c in contenders:
        summary = rounds_summary(parts[c.name])
        log.info("gRPC %s c=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, statuses %s", c.name, clients,
                 summary["throughput_rps"], summary["p50_ms"], summary["p99_ms"], summary["statuses"])
        out[c.name] = {"config": c.config, "level": summary,
                       "cpu_s_by_process": sorted((round(v, 2) for v in busy[c.name].values()), reverse=True)}
    return out


def run(triton_settings: dict[str, Any], bundle: Path, jpegs: list[bytes], args: argparse.Namespace,
        scratch: Path) -> dict[str, Any]:
    """Start imgcls (defaults + ``--grpc-port``) and Triton (``triton_settings``), measure both over gRPC at
    ``CLIENTS`` clients in ``args.rounds`` interleaved rounds of ``args.seconds`` in all, stop both."""
    from imgcls.service.host.launcher import free_port, start_server

    load_at_start, running = os.getloadavg()[0], []
    try:
        grpc_port = free_port()
        imgcls = start_server(bundle, scratch / "imgcls-grpc.log", ready_timeout=180,
                              args=["--model-name", OIP_MODEL, "--grpc-port", str(grpc_port)])
        running.append(imgcls)
        triton_log = scratch / "triton-grpc.log"
        triton = start_peer(PEERS["triton"], peer_env.ensure("triton"), triton_settings, bundle, triton_log)
        running.append(triton)
        wait_ready(triton, PEERS["triton"].build(jpegs[0], triton.settings), triton_log)
        shape = (1, 1) if triton.settings.batching else (1,)  # batching adds Triton's batch dimension
        label = ", ".join(f"{k}={v}" for k, v in triton_settings.items())
        contenders = [
            GrpcContender("imgcls", f"imgcls serve --grpc-port (defaults otherwise)", f"{HOST}:{grpc_port}",
                          [model_infer(j, (1,)) for j in jpegs], imgcls.process.pid),
            GrpcContender("triton", label, f"{HOST}:{triton.settings.extra_ports[0]}",
                          [model_infer(j, shape) for j in jpegs], triton.process.pid)]
        started = time.perf_counter()
        servers = measure(contenders, CLIENTS, args.seconds, args.rounds, args.max_requests)
        for contender in contenders:
            servers[contender.name].update(peak_rss(contender.pid))
    finally:
        codes = [server.stop() for server in running]
    return {"clients": CLIENTS, "rounds": args.rounds, "seconds": args.seconds, "servers": servers,
            "measured_s": round(time.perf_counter() - started, 1), "imgcls_exit_code": codes[0], "machine": machine(),
            "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}}
