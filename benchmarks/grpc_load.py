"""Open Inference Protocol over gRPC (``ModelInfer``) vs over HTTP (``/v2`` binary) on the same JPEGs.

    python -m benchmarks.grpc_load [--bundle DIR | --arch mobilenet_v2] --out benchmarks/results/grpc_load.json

One ``imgcls serve --grpc-port`` (``--workers``, default 2: the gRPC servers of the workers share
the port), one JPEG per request as a BYTES element, binary FP32 output, ``--concurrency`` clients.
HTTP through ``benchmarks.loadgen``'s keep-alive clients, each on its own connection (the body
tritonclient sends: JSON header + raw JPEG). gRPC through ``grpc.aio`` with the request message
serialised once and the answer's bytes not parsed (as the HTTP clients do not parse theirs), in two
forms: each client on its own channel (``grpc.use_local_subchannel_pool``: one TCP connection each),
and all clients on one channel, one connection: what ``tritonclient.grpc`` clients in one process
open, since gRPC channels with the same arguments share their connection. Each channel connects
before its first timed call, as a long-lived client's has (the connecting stays in the round's
duration; a gRPC channel's first call took 130-180 ms at load 10, an HTTP connection's setup is under
a millisecond on loopback and stays in its first request). The Python clients do not cost the same
(grpc.aio about twice the CPU per call of the HTTP client, taken from the server's cores), so both
routes are also driven by one client in C, ``h2load`` (``benchmarks.h2load``: a connection per
client, the same JPEGs). The forms alternate round by round so that a noisy machine charges them
alike; the CPU seconds of each server process under each form are recorded (which workers did the
work). Goal: gRPC >= 1.0x HTTP with p99 no worse, each gRPC form against HTTP driven by the same kind
of client. Loopback only; client and server share the machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import grpc

from benchmarks import h2load
from benchmarks.http_load import HOST, bundle_and_jpegs, drive, start
from benchmarks.loadgen import LoadResult, Request, check_loopback
from benchmarks.oip_load import add_load_arguments, interleaved, report, v2_binary
from benchmarks.peer_servers import cpu_seconds
from benchmarks.report import summary_row
from benchmarks.summaries import bundle_arch
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb

log = logging.getLogger("bench.grpc")
FORMS = ("http_v2_binary", "grpc_model_infer", "grpc_one_connection",
         "http_v2_binary_h2load", "grpc_model_infer_h2load")
GRPC_FORMS = {  # each gRPC form -> (its HTTP baseline, measured by the same kind of client; how it connects)
    "grpc_model_infer": ("http_v2_binary", "Python clients, a connection per client"),
    "grpc_one_connection": ("http_v2_binary", "Python clients, one shared connection"),
    "grpc_model_infer_h2load": ("http_v2_binary_h2load", "h2load for both, a connection per client"),
}
GOAL_RATIO = 1.0
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_message(name: str, jpeg: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
    return request.SerializeToString()


def drive_grpc(target: str, messages: list[bytes], concurrency: int, seconds: float, max_requests: int,
               shared: bool = False) -> LoadResult:
    """``concurrency`` clients, client i sending message i (mod the set): each on its own channel (connection),
    or with ``shared`` all on one channel (one connection)."""
    check_loopback(HOST)
    result = LoadResult(concurrency, 0.0)

    async def client(call: Any, index: int, deadline: float, budget: list[int]) -> None:
        message = messages[index % len(messages)]
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            try:
                await call(message, timeout=60)
                status = 200
            except grpc.aio.AioRpcError as exc:
                status = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(exc.code(), 500)
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    async def own_channel(index: int, deadline: float, budget: list[int]) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            await channel.channel_ready()  # connected first, as a long-lived client is
            await client(channel.unary_unary(METHOD), index, deadline, budget)

    async def run_all() -> None:
        deadline = time.perf_counter() + seconds
        budget = [max_requests]
        if not shared:
            await asyncio.gather(*(own_channel(i, deadline, budget) for i in range(concurrency)))
            return
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
            await channel.channel_ready()
            call = channel.unary_unary(METHOD)
            await asyncio.gather(*(client(call, i, deadline, budget) for i in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run_all())
    result.duration_s = time.perf_counter() - started
    return result


def measure(port: int, grpc_target: str, requests: list[Request], messages: list[bytes], concurrency: int,
            seconds: float, rounds: int, max_requests: int, server_pid: int) -> tuple[dict[str, dict[str, Any]], dict]:
    """Each form's summary, and the CPU seconds each server process spent under it (biggest first)."""
    bodies = [request.encode(HOST, port) for request in requests]
    runs = {"http_v2_binary": lambda c, s, m: drive(port, bodies, c, s, m),
            "grpc_model_infer": lambda c, s, m: drive_grpc(grpc_target, messages, c, s, m),
            "grpc_one_connection": lambda c, s, m: drive_grpc(grpc_target, messages, c, s, m, shared=True),
            **h2load_runs(port, grpc_target, requests, messages)}
    busy: dict[str, dict[int, float]] = {form: {} for form in FORMS}

    def counted(form: str) -> Any:
        def run(c: int, s: float, m: int) -> LoadResult:
            before = cpu_seconds(server_pid)
            result = runs[form](c, s, m)
            for pid, used in cpu_seconds(server_pid).items():
                busy[form][pid] = busy[form].get(pid, 0.0) + used - before.get(pid, 0.0)
            return result

        return run

    levels = interleaved({form: counted(form) for form in FORMS}, concurrency, seconds, rounds, max_requests, log)
    return levels, {form: sorted((round(v, 2) for v in spent.values() if v >= 0.05), reverse=True)
                    for form, spent in busy.items()}


def h2load_runs(port: int, grpc_target: str, requests: list[Request],
                messages: list[bytes]) -> dict[str, Callable[[int, float, int], LoadResult]]:
    """The same two routes driven by ``h2load`` (``benchmarks.h2load``; whole seconds, no request cap)."""
    path = requests[0].path
    http_headers = [[f"content-type: {r.content_type}", *(f"{k}: {v}" for k, v in r.headers)] for r in requests]
    grpc_url = f"http://{grpc_target}{METHOD}"
    frames = [h2load.grpc_frame(message) for message in messages]
    metrics = f"http://{HOST}:{port}/metrics"
    return {
        "http_v2_binary_h2load": lambda c, s, m: h2load.drive(f"http://{HOST}:{port}{path}", [r.body for r in requests],
                                                              http_headers, c, s, http1=True),
        "grpc_model_infer_h2load": lambda c, s, m: h2load.grpc_checked(
            lambda: h2load.drive(grpc_url, frames, [list(h2load.GRPC_HEADERS)], c, s, http1=False),
            metrics, "grpc:ModelInfer"),
    }


def summary(arch: str, concurrency: int, levels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for form, (base_form, clients) in GRPC_FORMS.items():
        level, base = levels[form], levels[base_form]
        ratio = level["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else 0.0
        met = ratio >= GOAL_RATIO and level["p99_ms"] <= base["p99_ms"]
        rows.append(summary_row(
            "27 gRPC", arch, f"gRPC ModelInfer req/s, JPEG as BYTES, c={concurrency}, {clients} "
            f"(p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms)", level["throughput_rps"],
            f"/v2 binary over HTTP {base['throughput_rps']:.3g} req/s (p50 {base['p50_ms']:.0f} ms, "
            f"p99 {base['p99_ms']:.0f} ms)", ratio, f">= {GOAL_RATIO}x HTTP, p99 no worse", met))
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="benchmarks.grpc_load", description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, "ABC")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    h2load.ensure_installed()  # before anything starts: a missing client fails the run at once

    from imgcls.service.host.launcher import free_port

    with tempfile.TemporaryDirectory(prefix="imgcls-grpc-bench-") as scratch:
        work = Path(scratch)
        bundle, jpegs = bundle_and_jpegs(args, work)
        grpc_port = free_port()
        server, port, ready_s = start(bundle, args.workers, work / "serve.log",
                                      ["--model-name", "bench", "--grpc-port", str(grpc_port)])
        load_at_start = os.getloadavg()[0]
        try:
            requests = [v2_binary("/v2/models/bench/infer", j) for j in jpegs]
            messages = [infer_message("bench", j) for j in jpegs]
            levels, cpu = measure(port, f"{HOST}:{grpc_port}", requests, messages, args.concurrency, args.seconds,
                                  args.rounds, args.max_requests, server.process.pid)
        finally:
            exit_code = server.stop()
        arch = bundle_arch(str(bundle))
    return report(args, "grpc_load", levels, "http_v2_binary", "x HTTP /v2 binary", {
        "arch": arch, "workers": args.workers, "ready_s": ready_s, "server_exit_code": exit_code,
        "summary": summary(arch, args.concurrency, levels)}, {
        "cpu_s_by_process": cpu, "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}})


if __name__ == "__main__":
    sys.exit(main())
