"""Decode ahead in a thread pool while the caller runs inference (no torch).

Pillow's decoders and resizes and ONNX Runtime's ``run()`` all release the GIL, so a pool of
decode threads filling the next batches while the main thread runs the current one keeps the
CPUs (or the GPU) busy. Order is preserved; a bad image never stops the stream, it becomes an
``ImageDecodeError`` in its slot. The Predictor (serving, scoring) and ``imgcls train``'s feature
caching through ONNX Runtime both decode this way.
"""
from __future__ import annotations

import collections
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from imgcls.models.core.preprocess import ImageDecodeError

log = logging.getLogger(__name__)

Source = TypeVar("Source")


def _guarded(decode: Callable[[Source], np.ndarray], source: Source) -> np.ndarray | ImageDecodeError:
    try:
        return decode(source)
    except ImageDecodeError as exc:
        return exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen decoder failure is still one bad file
        log.warning("unexpected %s decoding %r: %s", type(exc).__name__, source, exc)
        return ImageDecodeError("corrupt", f"decoder failed: {type(exc).__name__}: {exc}")


def decoded_batches(
    sources: Iterable[Source],
    decode: Callable[[Source], np.ndarray],
    batch_size: int,
    pool: ThreadPoolExecutor,
    prefetch_batches: int = 2,
) -> Iterator[list[tuple[Source, np.ndarray | ImageDecodeError]]]:
    """Batches of (source, pixels or error) in input order, decoding up to ``prefetch_batches`` ahead.

    ``sources`` is consumed lazily, so an input listing of millions of paths is never decoded (or
    held) all at once: at most ``(prefetch_batches + 1) * batch_size`` images are in flight.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = (prefetch_batches + 1) * batch_size
    pending: collections.deque[tuple[Source, Future]] = collections.deque()
    iterator = iter(sources)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    source = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((source, pool.submit(_guarded, decode, source)))
            if not pending:
                return
            count = min(batch_size, len(pending))
            yield [(source, future.result()) for source, future in (pending.popleft() for _ in range(count))]
    finally:
        for _, future in pending:  # the consumer stopped early: do not decode what nobody reads
            future.cancel()


def stack_decoded(
    batch: list[tuple[Source, np.ndarray | ImageDecodeError]],
) -> tuple[np.ndarray | None, list[int]]:
    """(uint8 [n, 3, H, W] of the good images or None, their positions in ``batch``)."""
    positions = [i for i, (_, item) in enumerate(batch) if isinstance(item, np.ndarray)]
    if not positions:
        return None, positions
    return np.stack([batch[i][1] for i in positions]), positions
