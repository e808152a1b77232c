"""Server-wide gauges computed at each scrape: workers configured/alive/ready and resident memory.

Per-worker gauges cannot say that a worker is missing (a worker killed by SIGKILL leaves its last
values behind in the multiprocess directory), so these are read from the live process tree when
``/metrics`` is rendered: the worker answering the scrape looks at its parent (the circus arbiter)
and the arbiter's children (every worker), and at the readiness markers (``readiness``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imgcls.service.host import readiness

WORKER_MODULE = "_bentoml_impl.worker.service"


def server_processes() -> tuple[list[psutil.Process], int]:
    """(the arbiter and its live children, how many of them are workers); this process alone outside BentoML."""
    me = psutil.Process(os.getpid())
    parent = me.parent()
    if parent is None or not any(WORKER_MODULE in part for part in _cmdline(me)):
        return [me], 1
    processes, workers = [parent], 0
    for child in parent.children():
        if readiness.alive(child.pid):
            processes.append(child)
            workers += any(WORKER_MODULE in part for part in _cmdline(child))
    return processes, workers


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class ServerCollector(Collector):
    def __init__(self, workers: int, state_dir: str) -> None:
        self.workers, self.state_dir = workers, state_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        processes, alive = server_processes()
        ready = len(readiness.live_markers(Path(self.state_dir))) if self.state_dir else alive
        yield GaugeMetricFamily("imgcls_workers_configured", "worker processes the server should run",
                                value=self.workers)
        yield GaugeMetricFamily("imgcls_workers_alive", "worker processes running now", value=alive)
        yield GaugeMetricFamily("imgcls_workers_ready", "workers warmed up and alive (/readyz needs all)",
                                value=ready)
        yield GaugeMetricFamily("imgcls_server_resident_memory_bytes",
                                "resident memory of the server: BentoML's arbiter and every worker", value=_rss(processes))
