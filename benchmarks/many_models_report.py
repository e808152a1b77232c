"""The RESULTS.md rows of ``benchmarks.many_models``: each goal, its figure and the same-run baseline."""
from __future__ import annotations

import statistics
from typing import Any

from benchmarks.report import summary_row

ITEM = "26 many models"
GOAL_TOTAL_MB = 1.5 * 1024
GOAL_THROUGHPUT = 0.97
GOAL_START_S = 0.5
GOAL_WORKER_MB = 110.0


def summary(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    arch = r.get("many_models_arch", "?")
    if "memory" in r:
        rows += memory_rows(r["memory"], r["clients"], arch)
    if "swap" in r:
        rows.append(swap_row(r["swap"], arch))
    if "one_model" in r:
        rows += one_model_rows(r["one_model"], r.get("bentoml_floor"), r["clients"])
    if "start" in r:
        rows.append(start_row(r["start"]))
    return rows


def memory_rows(m: dict[str, Any], clients: int, arch: str) -> list[dict[str, Any]]:
    many, one = m["many_model_server"], m["one_model_server"]
    total, ten = many["peak_rss_mb"], m["ten_one_model_servers_mb"]
    statuses = ", ".join(f"{k}: {v}" for k, v in many["load"]["statuses"].items())
    return [
        summary_row(ITEM, f"{arch} x{many['models']}",
                    f"one server, {len(many['workers_mb'])} workers, all models ({m.get('kind', '?')}): peak RSS MiB "
                    f"of all its processes after {clients} clients over every model (statuses {statuses})", total,
                    f"{many['models']} one-model servers: {ten:.0f} MiB ({m['ten_one_model_servers_how']}, "
                    f"{one['peak_rss_mb']:.0f} MiB)", total / ten if ten else None, "<= 1.5 GiB (1536 MiB)",
                    total <= GOAL_TOTAL_MB),
        summary_row(ITEM, arch, "each added model, MiB per worker (peak RSS per worker: "
                    f"{_mean(many['workers_mb']):.0f} with {many['models']} models)", m["added_model_per_worker_mb"],
                    f"a worker with one model: {_mean(one['workers_mb']):.0f} MiB"),
    ]


def swap_row(s: dict[str, Any], arch: str) -> dict[str, Any]:
    text = (f"replace a model under {s['clients']} clients ({s['workers']} workers): {s['failed']} failed of "
            f"{s['requests']}; before the load call {_versions(s['before'], s)}, during it ({s['load_s']:.1f} s) "
            f"{_versions(s['during'], s)}, after it {_versions(s['after'], s)}")
    return summary_row(ITEM, f"{arch} v1 -> v2", text, s["failed"], "", None,
                       "0 failed; old version before, new after", bool(s["goal_met"]))


def _versions(part: dict[str, Any], s: dict[str, Any]) -> str:
    names = {s["old_version"]: "old", s["new_version"]: "new"}
    return ", ".join(f"{n} {names.get(v, v or 'none')}" for v, n in part["versions"].items()) or "no answers"


def one_model_rows(o: dict[str, Any], floor: dict[str, Any] | None, clients: int) -> list[dict[str, Any]]:
    rows, today, before = [], o["imgcls"], o.get("before")
    for route in ("classify", "v2"):
        now = today[route][0] if today.get(route) else None
        then = before[route][0] if before and before.get(route) else None
        if now is None:
            continue
        ratio = now["throughput_rps"] / then["throughput_rps"] if then and then["throughput_rps"] else None
        base = (f"the code before ({then['throughput_rps']:.1f} req/s, p99 {then['p99_ms']:.0f} ms, rounds "
                f"{then['rounds_rps']}{_cpu_ms(before, route)}; ratio per round "
                f"{_spread(now['rounds_rps'], then['rounds_rps'])})" if then else "code before not measured")
        rows.append(summary_row(ITEM, "mobilenet_v2 (one model)",
                                f"/{route} req/s at {clients} clients (p99 {now['p99_ms']:.0f} ms, rounds "
                                f"{now['rounds_rps']}{_cpu_ms(today, route)})", now["throughput_rps"], base, ratio,
                                f">= {GOAL_THROUGHPUT}x the code before", ratio >= GOAL_THROUGHPUT if ratio else None))
    if floor:
        floor_worker = max((mib for name, mib in floor["peak_rss_by_process"] if "worker" in name), default=None)
        worker = max(today.get("workers_mb") or [0.0])
        if floor_worker:
            then = f"; the code before: {max(before['workers_mb']):.0f}" if before and before.get("workers_mb") else ""
            rows.append(summary_row(ITEM, "mobilenet_v2 (one model)", f"peak RSS MiB per worker after the load{then}",
                                    worker, f"a no-op BentoML worker: {floor_worker:.0f} MiB", worker / floor_worker,
                                    f"<= no-op worker + {GOAL_WORKER_MB:.0f} MiB",
                                    worker <= floor_worker + GOAL_WORKER_MB))
    return rows


def start_row(s: dict[str, Any]) -> dict[str, Any]:
    now, floor = s["imgcls"], s["bentoml_floor"]
    before = s.get("before")
    extra = f"; the code before {before['median_s']:.2f} s {before['samples_s']}" if before else ""
    return summary_row(ITEM, "mobilenet_v2 (one model)",
                       f"start to the first answered /classify, s (median; samples {now['samples_s']}{extra})",
                       now["median_s"], f"no-op BentoML service {floor['median_s']:.2f} s {floor['samples_s']}",
                       now["median_s"] / floor["median_s"], f"<= no-op + {GOAL_START_S} s",
                       now["median_s"] <= floor["median_s"] + GOAL_START_S)


def _cpu_ms(record: dict[str, Any], route: str) -> str:
    """The server's CPU time per answered request on ``route`` (all its processes): unlike req/s on a
    shared machine, it does not move with what else runs."""
    cpu, load = record.get(f"{route}_cpu_s_by_process"), record[route][0]
    if not cpu or not load.get("requests"):
        return ""
    return f"; {1000 * sum(cpu) / load['requests']:.1f} ms CPU per request"


def _spread(now: list[float], then: list[float]) -> str:
    """Median (min-max) of the round-by-round ratios: how much the machine's noise moves the total's."""
    ratios = [a / b for a, b in zip(now, then) if b]
    if not ratios:
        return "-"
    return f"median {statistics.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f}"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
