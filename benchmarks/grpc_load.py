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

from benchmarks.http_load import HOST, drive, start
from benchmarks.loadgen import LoadResult, check_loopback, rounds_summary
from benchmarks.oip_load import v2_binary
from benchmarks.predictor_throughput import export_random_bundle, write_jpegs
from benchmarks.report import markdown_table, summary_row, write_result
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
    parts: dict[str, list[LoadResult]] = {form: [] for form in FORMS}
    for form in FORMS:  # connections, caches and both code paths warm
        runs[form](4, 1.0, 100)
    for round_index in range(rounds):
        for form in FORMS:
            parts[form].append(runs[form](concurrency, seconds / rounds, max_requests))
            log.info("round %d %s: %.1f req/s", round_index + 1, form, parts[form][-1].summary()["throughput_rps"])
    return {form: rounds_summary(results) for form, results in parts.items()}


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
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: export a random-weights --arch)")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per form, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (AB AB ...)")
    parser.add_argument("--max-requests", type=int, default=3000, help="per round and form")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[600, 400])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from imgcls.service.host.launcher import free_port

    with tempfile.TemporaryDirectory(prefix="imgcls-grpc-bench-") as scratch:
        work = Path(scratch)
        bundle = args.bundle or export_random_bundle(args.arch, work)
        jpegs = [p.read_bytes() for p in write_jpegs(work / "jpegs", tuple(args.size), args.images)]
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
    base = levels["http_v2_binary"]["throughput_rps"]
    rows = [[form, s["throughput_rps"], s["throughput_rps"] / base if base else 0.0, s["p50_ms"], s["p99_ms"],
             s["statuses"]] for form, s in levels.items()]
    print(markdown_table(["form", "req/s", "x HTTP /v2 binary", "p50 ms", "p99 ms", "statuses"], rows))
    write_result(args.out, "grpc_load", {
        "arch": arch, "workers": args.workers, "concurrency": args.concurrency, "seconds_per_form": args.seconds,
        "rounds": args.rounds, "image_size": args.size, "images": args.images, "ready_s": ready_s,
        "server_exit_code": exit_code, "levels": levels, "summary": summary(arch, args.concurrency, levels),
    })
    all_ok = all(set(s["statuses"]) == {200} for s in levels.values())
    return 0 if exit_code == 0 and all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
