"""One count per worker, shared by the workers of a server through a memory-mapped file.

Each worker owns a slot ``(pid, count)`` in a small file of the server's state directory and
publishes its count there; any worker reads the others' without a lock (a slot is 16 bytes, written
by its one owner). A slot whose pid is no longer alive does not count. The least-connections accept
(``imgcls.service.host.accept``: open connections) and the gRPC call spreading
(``imgcls.service.host.grpc_spread``: ModelInfer calls running) each keep a board of their own.
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

from imgcls.service.host.readiness import alive

SLOT = struct.Struct("<qq")  # (pid, count)
MAX_WORKERS = 256
ALIVE_RECHECK_S = 1.0  # a worker seen alive is looked at again this long afterwards (a look costs ~40 us)


class WorkerBoard:
    """Per-worker (pid, count) slots in a shared, memory-mapped file."""

    def __init__(self, path: Path, index: int) -> None:
        if not 0 <= index < MAX_WORKERS:
            raise ValueError(f"worker index {index} outside 0..{MAX_WORKERS - 1}")
        with open(path, "a+b") as handle:  # created once by whichever worker comes first
            if os.fstat(handle.fileno()).st_size < SLOT.size * MAX_WORKERS:
                handle.truncate(SLOT.size * MAX_WORKERS)
            self.map = mmap.mmap(handle.fileno(), SLOT.size * MAX_WORKERS)
        self.index, self.pid = index, os.getpid()
        self.alive_until: dict[int, float] = {}  # pid -> until when it counts as alive without a look
        self.publish(0)

    def publish(self, count: int) -> None:
        SLOT.pack_into(self.map, self.index * SLOT.size, self.pid, count)

    def published(self) -> int:
        """This worker's own count as last published."""
        return SLOT.unpack_from(self.map, self.index * SLOT.size)[1]

    def least_elsewhere(self, workers: int) -> tuple[int, int] | None:
        """(worker index, count) of the other live worker with the lowest count; None when there is none."""
        best = None
        for index in range(min(workers + 1, MAX_WORKERS)):
            pid, count = SLOT.unpack_from(self.map, index * SLOT.size)
            if index == self.index or pid <= 0 or not self._alive(pid):
                continue
            if best is None or count < best[1]:
                best = (index, count)
        return best

    def _alive(self, pid: int) -> bool:
        """Whether ``pid`` runs, as seen at most ``ALIVE_RECHECK_S`` ago (a dead one is looked at every time)."""
        now = time.monotonic()
        if self.alive_until.get(pid, 0.0) > now:
            return True
        if not alive(pid):
            self.alive_until.pop(pid, None)
            return False
        self.alive_until[pid] = now + ALIVE_RECHECK_S
        return True
