"""Item 17's verdict from ``results/peers.json``: imgcls against the strongest peer at 16 clients
(req/s ratio, p99 no worse), start-to-ready against the fastest peer, memory against the smallest; over
gRPC, imgcls against Triton (a figure, no goal)."""
from __future__ import annotations

from typing import Any

from benchmarks.report import summary_row

GOAL = 1.0


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
                        "strongest": name == strongest, "round_ratios": round_ratios(ours, theirs),
                        "goal_met": ratio >= GOAL and ours["p99_ms"] <= theirs["p99_ms"]})
    return out


def round_ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> list[float]:
    """imgcls's req/s over the peer's in each interleaved round (the two ran one after the other):
    their spread is the noise of the machine, which the pooled ratio alone hides."""
    pairs = zip(ours.get("rounds_rps", []), theirs.get("rounds_rps", []))
    return [round(a / b, 3) for a, b in pairs if b]


def _spread(c: dict[str, Any]) -> str:
    ratios = c.get("round_ratios") or []
    return f"; per round {min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""


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
            c["imgcls_rps"], f"{c['peer']} best config {c['peer_rps']:.3g} req/s (p99 {c['p99_peer_ms']:.0f} ms{_spread(c)})",
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
    rows += grpc_rows(results)
    floor = results.get("bentoml_floor")
    if floor:  # the card's framework alone: imgcls cannot start faster or hold less than this
        rows.append(summary_row("17 peers", results["arch"], "BentoML no-op service: start-to-ready s",
                                floor["ready_s"], f"imgcls {ours['ready_s']:.3g} s", floor["ready_s"] / ours["ready_s"]))
        rows.append(summary_row("17 peers", results["arch"],
                                f"BentoML no-op service: peak RSS MiB ({floor['processes']} processes)",
                                floor["peak_rss_mb"], f"imgcls {ours['peak_rss_mb']:.0f} MiB",
                                floor["peak_rss_mb"] / ours["peak_rss_mb"]))
    return rows


def grpc_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """imgcls against Triton over gRPC (``benchmarks.peers_grpc``), when that point was measured."""
    grpc = results.get("grpc")
    if not grpc or not {"imgcls", "triton"} <= set(grpc["servers"]):
        return []
    ours, theirs = grpc["servers"]["imgcls"]["level"], grpc["servers"]["triton"]["level"]
    ratio = ours["throughput_rps"] / theirs["throughput_rps"] if theirs["throughput_rps"] else 0.0
    pairs = round_ratios(ours, theirs)
    spread = f", per round {min(pairs):.2f}-{max(pairs):.2f}x" if pairs else ""
    return [summary_row(
        "17 peers", results["arch"], f"imgcls gRPC ModelInfer req/s, JPEG as BYTES, c={grpc['clients']} "
        f"(p99 {ours['p99_ms']:.0f} ms)", ours["throughput_rps"],
        f"triton gRPC, {grpc['servers']['triton']['config']}: {theirs['throughput_rps']:.3g} req/s "
        f"(p99 {theirs['p99_ms']:.0f} ms{spread})", ratio)]
