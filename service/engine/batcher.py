"""Merge the images of concurrent requests into inference batches (one per worker process).

Natural batching: the inference thread takes everything that queued while the previous batch ran
(up to ``max_batch_size``), so an idle server answers a lone request at once and a busy one runs
bigger batches; ``batch_wait_ms`` optionally waits a little longer for stragglers. Only fixed
batch sizes ever reach the session (``BatchPlan``): on CPU a batch is split into power-of-two
chunks (no wasted compute), on GPU it is padded up to the next size (one launch). Each size is
warmed at start. When more than ``max_queue_images`` images wait, ``submit`` raises
``Overloaded`` at once (HTTP 503) instead of letting latency grow without bound. A request whose
``submit`` is cancelled while it waits (its caller gave up: a deadline passed) leaves the queue
unrun: the inference thread drops it when it takes the next batch.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from imgcls.service.engine.types import Overloaded  # noqa: F401  (raised here, typed for the protocols)
from imgcls.service.priority import as_computing_thread

# Default largest batch. On one ORT thread a batch is no cheaper per image (MobileNet-v2 7.5-8.6 ms at
# batch 1-8, 9.0-9.3 at 16; ResNet-50 77-85 ms at 1-8) and each doubling adds activations (MobileNet-v2
# session peak 96/105/126/167/302 MiB for largest batch 1/2/4/8/16) and makes the others wait longer.
# 16 clients on 2 workers, 3 interleaved pairs each: 8 -> 4 req/s equal, p99 272-276 -> 245-252 ms,
# 257 -> 213 MiB per worker; 4 -> 2 req/s equal, p99 258-271 -> 231-248 ms, 213 -> 188 MiB.
# With 2+ threads a batch uses them better (MobileNet-v2 on 2: 6.3 ms/image at 1, 4.5-5.6 at 2-8).
CPU_MAX_BATCH_ONE_THREAD = 2
CPU_MAX_BATCH = 8
GPU_MAX_BATCH = 16
InferFn = Callable[[np.ndarray, int], np.ndarray]  # (pixels, run size) -> probabilities (Predictor.infer)


@dataclass(frozen=True)
class BatchPlan:
    """Which batch sizes the session runs, and how an arbitrary count maps onto them."""

    sizes: tuple[int, ...]  # ascending, starts with 1
    pad: bool  # True: pad up to the next size (GPU); False: split into sizes (CPU)

    @classmethod
    def for_device(cls, max_batch_size: int, on_gpu: bool, threads: int = 1) -> "BatchPlan":
        """Powers of two up to ``max_batch_size``; 0 = the default for the device and the session's
        intra-op ``threads`` (the constants above)."""
        max_batch_size = max_batch_size or default_max_batch(on_gpu, threads)
        sizes = [1]
        while sizes[-1] * 2 <= max_batch_size:
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != max_batch_size:
            sizes.append(max_batch_size)
        return cls(tuple(sizes), pad=on_gpu)

    def chunks(self, count: int) -> list[tuple[int, int]]:
        """[(images, run size)] covering ``count`` images: run size > images only when padding."""
        out: list[tuple[int, int]] = []
        while count > 0:
            biggest = self.sizes[-1]
            if count >= biggest:
                out.append((biggest, biggest))
            elif self.pad:
                out.append((count, next(s for s in self.sizes if s >= count)))
            else:
                size = max(s for s in self.sizes if s <= count)
                out.append((size, size))
            count -= out[-1][0]
        return out

    def run(self, infer: InferFn, pixels: np.ndarray) -> np.ndarray:
        """Run ``pixels`` as the planned chunks; ``infer`` pads a chunk up to its run size."""
        results, start = [], 0
        for images, size in self.chunks(len(pixels)):
            results.append(infer(pixels[start : start + images], size))
            start += images
        return np.concatenate(results)


def default_max_batch(on_gpu: bool, threads: int) -> int:
    if on_gpu:
        return GPU_MAX_BATCH
    return CPU_MAX_BATCH if threads >= 2 else CPU_MAX_BATCH_ONE_THREAD


@dataclass
class _Job:
    pixels: np.ndarray  # [n, 3, H, W]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # set on the event loop when the caller stops waiting; read by the inference thread


@dataclass(frozen=True)
class BatchReport:
    """Given to ``on_batch`` after each batch (for metrics)."""

    images: int
    requests: int
    inference_s: float


@dataclass(frozen=True)
class JobResult:
    probabilities: np.ndarray
    queue_s: float
    inference_s: float


class MicroBatcher:
    """One inference thread fed by an unbounded-in-time but bounded-in-size queue."""

    def __init__(self, infer: InferFn, plan: BatchPlan, *, max_queue_images: int, batch_wait_ms: float = 0.0,
                 on_batch: Callable[[BatchReport], None] | None = None, niceness: int = 0) -> None:
        self._infer, self._plan = infer, plan
        self._max_batch = plan.sizes[-1]
        self._max_queue = max_queue_images
        self._wait_s = batch_wait_ms / 1000.0
        self._on_batch = on_batch
        self._niceness = niceness  # the inference thread's (imgcls.service.priority)
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="imgcls-inference", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        """Images waiting for inference now (not counting the batch running)."""
        return self._queued_images

    def warm_up(self, example: np.ndarray, rounds: int = 1) -> None:
        """Run every planned batch size ``rounds`` times (synchronously, before readiness)."""
        for size in self._plan.sizes:
            batch = np.repeat(example[None], size, axis=0)
            for _ in range(rounds):
                self._infer(batch, size)

    async def submit(self, pixels: np.ndarray) -> JobResult:
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._queued_images + len(pixels) > self._max_queue:
                raise Overloaded(f"{self._queued_images} images already wait for inference")
            self._queue.append(job)
            self._queued_images += len(pixels)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # not run if the inference thread has not taken it yet
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _take(self) -> list[_Job] | None:
        """The next batch's jobs (abandoned ones dropped); None once closed and empty."""
        jobs: list[_Job] = []
        while not jobs:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
            if self._wait_s:
                time.sleep(self._wait_s)
            with self._cond:
                images = 0
                while self._queue and (not jobs or images + len(self._queue[0].pixels) <= self._max_batch):
                    job = self._queue.popleft()
                    self._queued_images -= len(job.pixels)
                    if not job.abandoned:
                        jobs.append(job)
                        images += len(job.pixels)
        return jobs

    def _loop(self) -> None:
        as_computing_thread(self._niceness)
        while (jobs := self._take()) is not None:
            started = time.perf_counter()
            try:
                merged = jobs[0].pixels if len(jobs) == 1 else np.concatenate([j.pixels for j in jobs])
                probabilities = self._plan.run(self._infer, merged)
            except BaseException as exc:  # deliver the failure to every waiting request
                for job in jobs:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            elapsed = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(BatchReport(len(merged), len(jobs), elapsed))
            start = 0
            for job in jobs:
                part = probabilities[start : start + len(job.pixels)]
                start += len(job.pixels)
                result = JobResult(part, started - job.queued_at, elapsed)
                job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future, value: JobResult) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
