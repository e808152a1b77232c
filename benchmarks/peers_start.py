"""Start-to-ready of every contender, measured apart from the load rounds.

Each server is started alone (nothing else of the benchmark running), in rotating order, a few
times; from its spawn a real classification is sent every 20 ms until one answers 200 (Triton answers
400 until its model is loaded; nothing answers before the port is bound). The median is the figure.
Why apart: in the final phase each server starts right after the previous one (or right after the
grid's last peer stopped), so the first one started pays for the others' exits; in run 7 imgcls took
4.5 s there against 3.3 s for its variants started a minute later.
"""
from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import bentoml_floor, peer_env
from benchmarks.peer_servers import HOST, OIP_MODEL, PEERS, first_answer, raw_request, start_peer
from benchmarks.report import stop_group

log = logging.getLogger("bench.peers_start")
Start = Callable[[Path], float]  # scratch folder -> seconds from spawn to the first classification


def imgcls_start(bundle: Path, jpeg: bytes) -> Start:
    """``imgcls serve`` with its defaults (the command a user types), timed to its first /classify."""
    from imgcls.service.host.launcher import free_port

    def start(scratch: Path) -> float:
        port = free_port()
        command = [sys.executable, "-m", "imgcls", "serve", str(bundle), "--host", HOST, "--port", str(port),
                   "--model-name", OIP_MODEL]
        with open(scratch / "imgcls-start.log", "ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        started_at = time.monotonic()
        try:
            return first_answer(process, port, raw_request("/classify", jpeg), started_at)
        finally:
            stop_group(process)
    return start


def peer_start(name: str, settings: dict[str, Any], bundle: Path, jpeg: bytes) -> Start:
    """The peer's best configuration, timed to its first answer to its own request for ``jpeg``."""
    peer = PEERS[name]

    def start(scratch: Path) -> float:
        running = start_peer(peer, peer_env.ensure(name), settings, bundle, scratch / f"{name}-start.log")
        try:
            return first_answer(running.process, running.port, peer.build(jpeg, running.settings), running.started_at)
        finally:
            running.stop()
    return start


def floor_start(workers: int) -> Start:
    return lambda _scratch: bentoml_floor.measure(workers)["ready_s"]


def measure(starts: dict[str, Start], scratch: Path, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds to ready per contender, ``repeats`` each, the order rotated every repeat."""
    names = list(starts)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(round(starts[name](scratch), 3))
            log.info("%s ready in %.2f s (start %d of %d)", name, samples[name][-1], repeat + 1, repeats)
    return samples


def apply(results: dict[str, Any], samples: dict[str, list[float]]) -> None:
    """Median start-to-ready into each record (``ready_s``); the final phase's figure is kept aside."""
    records = {"imgcls": results["imgcls"], "bentoml_floor": results["bentoml_floor"],
               **{name: peer["best"] for name, peer in results["peers"].items() if "best" in peer}}
    for name, values in samples.items():
        record = records[name]
        record["ready_s_in_final_phase"] = record.get("ready_s")
        record["ready_s"] = statistics.median(values)
        record["ready_s_samples"] = values
