"""The threads that compute yield the CPU to the threads that move requests.

Under load a worker's inference thread and decode threads are runnable nearly all the time (on 2
cores with 2 workers: inference about 52 % of a core, each decode thread about 14 %, per worker),
while the event loop (HTTP, gRPC's acceptance of a call and its answer) and gRPC's completion-queue
poller wake for a moment per request. When every core is busy, each such wake-up waits for a core
behind the computing threads, and a request passes several of them; the wait lands in the latency
tail. Linux's nice value is per thread: the computing threads run at ``work_niceness`` (10 by
default; ``imgcls serve --work-niceness``), so a thread that wakes to move a request preempts them
at once, and they take the CPU back as soon as it sleeps again (throughput does not drop: the
computing threads get every cycle the others leave). Measured with 2 workers on 2 cores, 16 clients
(h2load, MobileNet-v2, one JPEG per request; off and on served side by side, rounds interleaved), in
two runs of 6 and 8 rounds: ``/v2`` binary over HTTP p99 154 -> 107 and 144 -> 120 ms, gRPC
ModelInfer p99 155 -> 130 and 150 -> 144 ms; requests per second equal or higher (HTTP 223 -> 238
and 228 -> 233, gRPC 235 -> 237 and 230 -> 231).

The nice value is relative to the other threads of the machine's scheduling group (the container's
or service's cgroup), so other programs that share the cgroup also come first; ``--work-niceness
0`` turns it off. A process cannot raise its threads' priority again without privileges; the
threads are the engine's own and live as long as their model.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)
MAX_NICENESS = 19


def lower_this_thread(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (Linux: per thread; elsewhere nice is per
    process, so nothing is done)."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.nice(niceness)
    except OSError as error:  # a seccomp profile may refuse it: the thread runs as before
        log.warning("could not lower a computing thread's priority: %s", error)
