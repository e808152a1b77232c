"""The threads that compute yield the CPU to the threads that move requests.

Under load a worker's inference thread and decode threads are runnable nearly all the time (on 2
cores with 2 workers: inference about 52 % of a core, each decode thread about 14 %, per worker),
while the event loop (HTTP, gRPC's acceptance of a call and its answer) and gRPC's completion-queue
poller wake for a moment per request. When every core is busy, each such wake-up waits for a core
behind the computing threads, and a request passes several of them; the wait lands in the latency
tail. Two measures, both per thread (Linux):

* **Nice value.** The computing threads run at ``work_niceness`` (10 by default; ``imgcls serve
  --work-niceness``), so a thread that wakes to move a request preempts them at once, and they take
  the CPU back as soon as it sleeps again (throughput does not drop: the computing threads get every
  cycle the others leave). Measured with 2 workers on 2 cores, 16 clients (h2load, MobileNet-v2, one
  JPEG per request; off and on served side by side, rounds interleaved), in two runs of 6 and 8
  rounds: ``/v2`` binary over HTTP p99 154 -> 107 and 144 -> 120 ms, gRPC ModelInfer p99 155 -> 130
  and 150 -> 144 ms; requests per second equal or higher.
* **One CPU per worker for the threads that move requests** (``pin_this_thread``, with several
  workers: ``io_cpu``). A gRPC call passes three such threads of its worker one after the other (the
  gRPC core's poller, its completion-queue thread, the event loop); each wake-up also waited behind
  the *other* workers' loops and gRPC threads, which the nice value does not order. A worker's loop
  thread is tied to one CPU before anything else starts, so the threads it starts (gRPC's, the event
  loop's helpers) are tied there too, one CPU per worker; the computing threads untie themselves
  (``as_computing_thread``) and ONNX Runtime's threads are started untied (``on_all_cpus``), so the
  work still spreads over every CPU. Measured as above (8 rounds, tied and untied side by side): gRPC
  p99 149 -> 104 ms, HTTP p99 144 -> 116 ms, requests per second equal (gRPC 225 -> 228, HTTP 228 ->
  226). Each worker's request threads use about 15 % of a core. Not done under a CPU quota smaller
  than the CPUs the process may run on (a shared machine: the tied CPU may be busy with others'
  work); ``--no-pin-io-threads`` turns it off.

The nice value is relative to the other threads of the machine's scheduling group (the container's
or service's cgroup), so other programs that share the cgroup also come first; ``--work-niceness
0`` turns it off. A process cannot raise its threads' priority again without privileges; the
threads are the engine's own and live as long as their model.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

log = logging.getLogger(__name__)
MAX_NICENESS = 19
_ALL_CPUS: set[int] = set()  # the process's CPUs, remembered when a thread of it was tied to one


def io_cpu(worker: int, workers: int, quota: float | None) -> int | None:
    """The CPU worker ``worker`` (1..``workers``) ties its request threads to, or None: one worker, a
    single CPU, no per-thread affinity (not Linux), or a CPU ``quota`` (the cgroup's, in CPUs; None:
    none) below the CPUs we may run on."""
    if workers < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or (quota is not None and quota < len(cpus)):
        return None
    return cpus[(worker - 1) % len(cpus)]


def pin_this_thread(cpu: int) -> None:
    """Tie the calling thread, and the threads it starts from now on, to ``cpu``."""
    _ALL_CPUS.update(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as error:
        log.warning("could not tie the request threads to CPU %d: %s", cpu, error)


def _untie_this_thread() -> None:
    if _ALL_CPUS and os.sched_getaffinity(0) != _ALL_CPUS:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, _ALL_CPUS)


@contextlib.contextmanager
def on_all_cpus() -> Iterator[None]:
    """Run the block untied (threads started in it, such as ONNX Runtime's, run on every CPU)."""
    if not _ALL_CPUS:
        yield
        return
    before = os.sched_getaffinity(0)
    _untie_this_thread()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def as_computing_thread(niceness: int) -> None:
    """Make the calling thread a computing one: run on every CPU of the process (when its starter was
    tied to one) and raise its nice value by ``niceness`` (Linux: per thread; elsewhere nice is per
    process, so nothing is done)."""
    _untie_this_thread()
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.nice(niceness)
    except OSError as error:  # a seccomp profile may refuse it: the thread runs as before
        log.warning("could not lower a computing thread's priority: %s", error)
