"""Open Inference Protocol over gRPC (``ModelInfer``) vs over HTTP (``/v2`` binary) on the same JPEGs.

    python -m benchmarks.grpc_load [--bundle DIR | --arch mobilenet_v2] --out benchmarks/results/grpc_load.json

One ``imgcls serve --grpc-port`` (``--workers``, default 2: the gRPC servers of the workers share
the port), one JPEG per request as a BYTES element, binary FP32 output, ``--concurrency`` clients
each on its own connection: HTTP through ``benchmarks.loadgen``'s keep-alive clients (the body
tritonclient sends: JSON header + raw JPEG), gRPC through ``grpc.aio`` with the request message
serialised once and the answer's bytes not parsed (as the HTTP clients do not parse theirs).
Both forms alternate round by round so that a noisy machine charges them alike. Goal: gRPC >= 1.0x
HTTP with p99 no worse. Loopback only; client and server share the machine's cores.
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

import grpc

from benchmarks.http_load import HOST, bundle_and_jpegs, drive, start
from benchmarks.loadgen import LoadResult, check_loopback
from benchmarks.oip_load import add_load_arguments, interleaved, report, v2_binary
from benchmarks.report import summary_row
from benchmarks.summaries import bundle_arch
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb

log = logging.getLogger("bench.grpc")
FORMS = ("http_v2_binary", "grpc_model_infer")
GOAL_RATIO = 1.0
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_message(name: str, jpeg: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg)
    return request.SerializeToString()


def drive_grpc(target: str, messages: list[bytes], concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """``concurrency`` clients, each on its own channel (connection), client i sending message i (mod the set)."""
    check_loopback(HOST)
    result = LoadResult(concurrency, 0.0)

    async def client(index: int, deadline: float, budget: list[int]) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.unary_unary(METHOD)
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

    async def run_all() -> None:
        deadline = time.perf_counter() + seconds
        budget = [max_requests]
        await asyncio.gather(*(client(i, deadline, budget) for i in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run_all())
    result.duration_s = time.perf_counter() - started
    return result


def measure(port: int, grpc_target: str, bodies: list[bytes], messages: list[bytes], concurrency: int,
            seconds: float, rounds: int, max_requests: int) -> dict[str, dict[str, Any]]:
    runs = {"http_v2_binary": lambda c, s, m: drive(port, bodies, c, s, m),
            "grpc_model_infer": lambda c, s, m: drive_grpc(grpc_target, messages, c, s, m)}
    return interleaved({form: runs[form] for form in FORMS}, concurrency, seconds, rounds, max_requests, log)


def summary(arch: str, concurrency: int, levels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base, level = levels["http_v2_binary"], levels["grpc_model_infer"]
    ratio = level["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else 0.0
    met = ratio >= GOAL_RATIO and level["p99_ms"] <= base["p99_ms"]
    return [summary_row(
        "27 gRPC", arch, f"gRPC ModelInfer req/s, JPEG as BYTES, c={concurrency} (p50 {level['p50_ms']:.0f} ms, "
        f"p99 {level['p99_ms']:.0f} ms)", level["throughput_rps"],
        f"/v2 binary over HTTP {base['throughput_rps']:.3g} req/s (p50 {base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms)",
        ratio, f">= {GOAL_RATIO}x HTTP, p99 no worse", met)]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="benchmarks.grpc_load", description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, "AB")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from imgcls.service.host.launcher import free_port

    with tempfile.TemporaryDirectory(prefix="imgcls-grpc-bench-") as scratch:
        work = Path(scratch)
        bundle, jpegs = bundle_and_jpegs(args, work)
        grpc_port = free_port()
        server, port, ready_s = start(bundle, args.workers, work / "serve.log",
                                      ["--model-name", "bench", "--grpc-port", str(grpc_port)])
        try:
            bodies = [v2_binary("/v2/models/bench/infer", j).encode(HOST, port) for j in jpegs]
            messages = [infer_message("bench", j) for j in jpegs]
            levels = measure(port, f"{HOST}:{grpc_port}", bodies, messages, args.concurrency, args.seconds,
                             args.rounds, args.max_requests)
        finally:
            exit_code = server.stop()
        arch = bundle_arch(str(bundle))
    return report(args, "grpc_load", levels, "http_v2_binary", "x HTTP /v2 binary", {
        "arch": arch, "workers": args.workers, "ready_s": ready_s, "server_exit_code": exit_code,
        "summary": summary(arch, args.concurrency, levels)})


if __name__ == "__main__":
    sys.exit(main())
