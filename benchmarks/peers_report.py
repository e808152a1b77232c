"""The RESULTS.md section of item 17 (``benchmarks.peers``): every server at every client count,
each peer's tuning grid, start-to-ready and memory, and imgcls against Triton over gRPC, from
``results/peers.json``."""
from __future__ import annotations

from typing import Any

from benchmarks.report import markdown_table


def _level(level: dict[str, Any] | None) -> str:
    if level is None:
        return "-"
    bad = {k: v for k, v in level["statuses"].items() if str(k) != "200"}
    return (f"{level['throughput_rps']:.3g} ({level['p50_ms']:.0f}/{level['p99_ms']:.0f})"
            + (f" non-200: {bad}" if bad else ""))


def _servers(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(server, configuration, the run that measured it, its levels) for imgcls's routes and each peer's best."""
    ours = result["imgcls"]
    rows = [("imgcls /classify", ours.get("config", "defaults"), ours, ours["classify"])]
    if ours.get("v2"):
        rows.append(("imgcls /v2", ours.get("config", "defaults"), ours, ours["v2"]))
    for variant in result.get("imgcls_variants", []):
        rows.append(("imgcls /classify", variant["config"], variant, variant["classify"]))
    for name, peer in result["peers"].items():
        if "best" in peer:
            rows.append((name, peer["best"]["label"], peer["best"], peer["best"]["levels"]))
    return rows


def cpu_field(server: str) -> str:
    return "v2_cpu_s_by_process" if server.endswith("/v2") else (
        "classify_cpu_s_by_process" if server.startswith("imgcls") else "levels_cpu_s_by_process")


def per_cpu_second(server: str, run: dict[str, Any], levels: list[dict[str, Any]]) -> str:
    """Answered requests per CPU second of the server's processes, all levels together: its cost per
    request, which a CPU share taken from a shared machine's other jobs does not flatter."""
    cpu = sum(run.get(cpu_field(server), []))
    return f"{sum(level['ok'] for level in levels) / cpu:.1f}" if cpu else "-"


def _ready_how(result: dict[str, Any]) -> str:
    samples = result["imgcls"].get("ready_s_samples")
    if not samples:
        return " (as each server started for the final phase)"
    starts = {name: record["ready_s_samples"] for name, record in
              [("imgcls", result["imgcls"]), ("BentoML no-op", result["bentoml_floor"]),
               *((n, p["best"]) for n, p in result["peers"].items() if "best" in p)] if record.get("ready_s_samples")}
    listed = "; ".join(f"{name} {', '.join(f'{v:.2f}' for v in values)}" for name, values in starts.items())
    return (f", the median of {len(samples)} cold starts of each server alone, in rotating order, polled every 20 ms "
            f"(seconds: {listed})")


def levels_table(result: dict[str, Any]) -> str:
    counts = result["settings"]["levels"]
    reference = result["imgcls"].get("top1")
    rows = []
    for server, config, run, levels in _servers(result):
        by_clients = {level["concurrency"]: level for level in levels}
        same = "yes" if run.get("top1") == reference and reference else "NO"
        rows.append([server, config, *(_level(by_clients.get(c)) for c in counts), f"{run['ready_s']:.1f}",
                     f"{run['peak_rss_mb']:.0f} ({run['processes']})", per_cpu_second(server, run, levels), same])
    headers = ["server", "configuration", *(f"c={c} req/s (p50/p99 ms)" for c in counts), "ready s",
               "peak RSS MiB (processes)", "req per CPU s", "top-1 = imgcls's on every JPEG"]
    return markdown_table(headers, rows)


def grid_table(result: dict[str, Any]) -> str:
    rows = []
    for name, peer in result["peers"].items():
        for entry in peer["grid"]:
            label = ", ".join(f"{k}={v}" for k, v in entry["settings"].items())
            if "levels" in entry:
                level = entry["levels"][0]
                rows.append([name, label, _level(level), f"{entry['ready_s']:.1f}", f"{entry['peak_rss_mb']:.0f}", ""])
            else:
                rows.append([name, label, "-", "-", "-", entry.get("error", "")[-120:].replace("\n", " ")])
    clients = result["settings"]["grid_clients"]
    return markdown_table(["peer", "configuration", f"c={clients} req/s (p50/p99 ms)", "ready s", "peak RSS MiB",
                           "error"], rows)


def cpu_line(result: dict[str, Any]) -> list[str]:
    parts = []
    for server, config, run, _ in _servers(result):
        spread = run.get(cpu_field(server))
        if spread:
            parts.append(f"{server} ({config}): {', '.join(f'{v:g}' for v in spread)}")
    if not parts:
        return []
    return ["CPU seconds per process while each server was loaded (all levels; an idle worker shows as ~0): "
            + "; ".join(parts) + ".", ""]


def memory_line(result: dict[str, Any]) -> list[str]:
    """Peak RSS of each process of each server (the worker's share beside the total), once per run."""
    parts, seen = [], set()
    for server, config, run, _ in _servers(result):
        each = run.get("peak_rss_by_process")
        if not each or id(run) in seen:
            continue
        seen.add(id(run))
        parts.append(f"{server.split(' /')[0]} ({config}): " + ", ".join(f"{name} {mib:.0f}" for name, mib in each))
    if not parts:
        return []
    return ["Peak RSS per process, MiB (what each process runs): " + "; ".join(parts) + ".", ""]


def split_line(result: dict[str, Any]) -> list[str]:
    split = result["imgcls"].get("one_at_a_time_ms")
    if not split:
        return cpu_line(result)
    return [*cpu_line(result), "imgcls, one request at a time (medians, ms): client latency "
            f"{split.get('client_ms', float('nan')):.1f}, of which the server's own total {split.get('total_ms', 0):.1f} "
            f"(decode {split.get('decode_ms', 0):.1f}, queue {split.get('queue_ms', 0):.1f}, inference "
            f"{split.get('inference_ms', 0):.1f}); the rest is HTTP, framework and response work.", ""]


def grpc_lines(result: dict[str, Any]) -> list[str]:
    """The gRPC point (``benchmarks.peers_grpc``): imgcls ``--grpc-port`` against Triton's gRPC endpoint."""
    grpc = result.get("grpc")
    if not grpc:
        return ["Over gRPC: not measured in this run (`python -m benchmarks.peers --grpc-only --out ...` adds it).", ""]
    rows = []
    for name, server in grpc["servers"].items():
        level = server["level"]
        cpu = sum(server.get("cpu_s_by_process", []))
        rows.append([name, server["config"], _level(level), f"{server['peak_rss_mb']:.0f} ({server['processes']})",
                     f"{level['ok'] / cpu:.1f}" if cpu else "-",
                     ", ".join(f"{v:g}" for v in server.get("cpu_s_by_process", []))])
    machine = grpc.get("machine", {})
    return [
        f"Over gRPC (`inference.GRPCInferenceService/ModelInfer`), measured on {machine.get('date', '?')} "
        f"({machine.get('cpu', '?')}){_load(grpc)}: imgcls with its defaults plus `--grpc-port` and Triton's best "
        "configuration above (its own gRPC endpoint) side by side, "
        f"{grpc['clients']} clients each on its own channel and TCP connection (`tritonclient.grpc` clients in one "
        "process would share one), the same JPEGs as one BYTES element in `raw_input_contents` (as tritonclient sends them), each "
        f"server's default outputs, {grpc['rounds']} interleaved rounds, {grpc['seconds']:g} s per server; every "
        "answer must be OK:",
        "",
        markdown_table([f"server", "configuration", f"c={grpc['clients']} req/s (p50/p99 ms)",
                        "peak RSS MiB (processes)", "req per CPU s", "CPU s per process under load"], rows),
        "",
    ]


def _load(result: dict[str, Any]) -> str:
    load = result.get("load_average")
    return f", 1-minute load average {load['start']:.1f} at the start and {load['end']:.1f} at the end" if load else ""


def section(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["Peers (item 17): not measured in this run; `make bench-peers` writes `results/peers.json`.", ""]
    interpreters = "; ".join(f"{n}: Python {p.get('interpreter', '?')}" for n, p in result["peers"].items())
    jpegs = ", ".join(j["image"] for j in result["jpegs"])
    v2 = "" if result["imgcls"].get("v2") else (
        " imgcls `/v2` was not in this build (`GET /v2/health/ready` did not answer 200), so only `/classify` is compared;"
        " the harness measures `/v2` with Triton's exact request once the route exists.")
    return [
        "## Peers (item 17): Triton (PyTriton), LitServe, mosec and imgcls, same model and JPEGs",
        "",
        f"`make bench-peers` (`python -m benchmarks.peers`), {result.get('seconds', 0) / 60:.1f} min, one run "
        f"on {result['machine'].get('date', '?')}, on {result['machine'].get('cpu', '?')} ({result['machine'].get('cores_usable', '?')} usable cores"
        f"{', AVX2' if result['machine'].get('avx2') else ''}{', AVX-512' if result['machine'].get('avx512f') else ''}"
        f"{', VNNI' if result['machine'].get('vnni') else ''}){_load(result)}: "
        "figures move by about ±10 % between rounds, and only the ratios of this one run mean anything. Every server decodes with our "
        "`Preprocess`, runs ONNX Runtime 1.31.1 on the same MobileNet-v2 `model.onnx` (intra-op threads = usable "
        "CPUs / instances, no spinning) and answers the top 5. The grid tunes each peer alone; then imgcls and each "
        "peer's best run side by side (started one after another) and are measured in interleaved rounds "
        f"({result['settings'].get('rounds', 1)} per point, {result['settings']['seconds']:g} s per point and server, "
        f"the idle ones waiting), with the same bounded keep-alive load generator cycling through the same JPEGs ({jpegs})."
        f"{v2}",
        "",
        "Requests: imgcls `/classify` the raw `image/jpeg` body; Triton the Open Inference Protocol, the JPEG as a "
        "BYTES element in the binary tensor extension (as tritonclient sends it, binary outputs); mosec the raw body; "
        "LitServe base64 in JSON (multipart uploads do not cross LitServe 0.2.19's worker queue). "
        f"Interpreters: {interpreters}. Ready = process start to the first answered classification{_ready_how(result)}; "
        "memory = the summed peak RSS of the server's process tree (shared pages of forked workers counted in each).",
        "",
        "Best configuration of each peer, and imgcls with its defaults:",
        "",
        levels_table(result),
        "",
        *split_line(result),
        *memory_line(result),
        *grpc_lines(result),
        f"Tuning grid at {result['settings']['grid_clients']} clients (best = highest req/s):",
        "",
        grid_table(result),
        "",
    ]
