"""``POST /v2/models/{name}/infer`` (Open Inference Protocol) vs ``POST /classify`` on the same JPEGs.

    python -m benchmarks.oip_load [--bundle DIR | --arch mobilenet_v2] --out benchmarks/results/oip_load.json

One ``imgcls serve`` (one worker), one JPEG per request, ``--concurrency`` keep-alive clients
(``benchmarks.loadgen``). Three request forms, interleaved round by round so that a noisy machine
charges them alike: ``/classify`` multipart (the baseline), ``/v2`` with the binary tensor data
extension (the raw JPEG after the JSON header, binary FP32 output, as tritonclient sends it) and
``/v2`` JSON (base64 BYTES element, JSON output). Goal: /v2 binary >= 0.95x /classify. Loopback only.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import struct
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

from benchmarks.http_load import HOST, bundle_and_jpegs, drive, start
from benchmarks.loadgen import LoadResult, Request, multipart_request, rounds_summary
from benchmarks.report import markdown_table, summary_row, write_result
from benchmarks.summaries import bundle_arch

log = logging.getLogger("bench.oip")
FORMS = ("classify_multipart", "v2_binary", "v2_json")
GOAL_RATIO = 0.95
HEADER_LENGTH = "Inference-Header-Content-Length"


def v2_binary(path: str, jpeg: bytes) -> Request:
    raw = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return Request("POST", path, header + raw, "application/octet-stream", ((HEADER_LENGTH, str(len(header))),))


def v2_json(path: str, jpeg: bytes) -> Request:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(jpeg).decode()]}]}
    return Request("POST", path, json.dumps(body).encode(), "application/json")


def payloads(jpegs: list[bytes], name: str, port: int) -> dict[str, list[bytes]]:
    infer = f"/v2/models/{name}/infer"
    requests = {
        "classify_multipart": [multipart_request("/classify", "images", [(f"{i}.jpg", j, "image/jpeg")])
                               for i, j in enumerate(jpegs)],
        "v2_binary": [v2_binary(infer, j) for j in jpegs],
        "v2_json": [v2_json(infer, j) for j in jpegs],
    }
    return {form: [r.encode(HOST, port) for r in items] for form, items in requests.items()}


def interleaved(runs: dict[str, Callable[[int, float, int], LoadResult]], concurrency: int, seconds: float,
                rounds: int, max_requests: int, logger: logging.Logger = log) -> dict[str, dict[str, Any]]:
    """Every form warmed, then ``rounds`` rounds of every form in turn; ``runs[form](concurrency, seconds,
    max_requests)`` drives one form once."""
    parts: dict[str, list[LoadResult]] = {form: [] for form in runs}
    for run in runs.values():  # connections, caches and every form's code path warm
        run(4, 1.0, 100)
    for round_index in range(rounds):
        for form, run in runs.items():
            parts[form].append(run(concurrency, seconds / rounds, max_requests))
            logger.info("round %d %s: %.1f req/s", round_index + 1, form, parts[form][-1].summary()["throughput_rps"])
    return {form: rounds_summary(results) for form, results in parts.items()}


def measure(port: int, bodies: dict[str, list[bytes]], concurrency: int, seconds: float, rounds: int,
            max_requests: int) -> dict[str, dict[str, Any]]:
    return interleaved({form: partial(drive, port, bodies[form]) for form in FORMS}, concurrency, seconds, rounds,
                       max_requests)


def summary(arch: str, concurrency: int, levels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = levels["classify_multipart"]
    base_text = (f"/classify multipart {base['throughput_rps']:.3g} req/s "
                 f"(p50 {base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms)")
    rows = []
    for form, label in (("v2_binary", "binary tensor data"), ("v2_json", "JSON, base64 BYTES")):
        level = levels[form]
        ratio = level["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else 0.0
        is_goal = form == "v2_binary"
        rows.append(summary_row(
            "12 OIP", arch, f"/v2 infer req/s, {label}, c={concurrency} (p50 {level['p50_ms']:.0f} ms, "
            f"p99 {level['p99_ms']:.0f} ms)", level["throughput_rps"], base_text, ratio,
            f">= {GOAL_RATIO}x /classify" if is_goal else "", ratio >= GOAL_RATIO if is_goal else None))
    return rows


def add_load_arguments(parser: argparse.ArgumentParser, forms: str) -> None:
    """The flags of the load benchmarks that compare request forms round by round (``forms``: "AB", "ABC")."""
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: export a random-weights --arch)")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per request form, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4, help=f"interleaved rounds ({forms} {forms} ...)")
    parser.add_argument("--max-requests", type=int, default=3000, help="per round and form")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[600, 400])
    parser.add_argument("--out", type=Path)


def report(args: argparse.Namespace, name: str, levels: dict[str, dict[str, Any]], base_form: str, base_column: str,
           record: dict[str, Any], extra: dict[str, Any] | None = None) -> int:
    """The forms' table against ``base_form``, the result file (``record`` with the run's flags and ``levels``,
    plus ``extra``); 0 when the server exited 0 and every request was answered 200."""
    base = levels[base_form]["throughput_rps"]
    rows = [[form, s["throughput_rps"], s["throughput_rps"] / base if base else 0.0, s["p50_ms"], s["p99_ms"],
             s["statuses"]] for form, s in levels.items()]
    print(markdown_table(["form", "req/s", base_column, "p50 ms", "p99 ms", "statuses"], rows))
    exit_code = record["server_exit_code"]
    write_result(args.out, name, {
        "arch": record["arch"], "workers": record["workers"], "concurrency": args.concurrency,
        "seconds_per_form": args.seconds, "rounds": args.rounds, "image_size": args.size, "images": args.images,
        "ready_s": record["ready_s"], "server_exit_code": exit_code, "levels": levels, "summary": record["summary"],
        **(extra or {}),
    })
    all_ok = all(set(s["statuses"]) == {200} for s in levels.values())
    return 0 if exit_code == 0 and all_ok else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="benchmarks.oip_load", description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, "ABC")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="imgcls-oip-bench-") as scratch:
        work = Path(scratch)
        bundle, jpegs = bundle_and_jpegs(args, work)
        server, port, ready_s = start(bundle, 1, work / "serve.log", ["--model-name", "bench"])
        try:
            levels = measure(port, payloads(jpegs, "bench", port), args.concurrency, args.seconds, args.rounds,
                             args.max_requests)
        finally:
            exit_code = server.stop()
        arch = bundle_arch(str(bundle))
    return report(args, "oip_load", levels, "classify_multipart", "x /classify", {
        "arch": arch, "workers": 1, "ready_s": ready_s, "server_exit_code": exit_code,
        "summary": summary(arch, args.concurrency, levels)})


if __name__ == "__main__":
    sys.exit(main())
