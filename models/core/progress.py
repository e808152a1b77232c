"""Progress of long steps in images: training (checking images, caching features, epochs,
validation) and batch scoring.

On a terminal: a tqdm bar counting images, with images/s and an ETA. Anywhere else (a log file,
CI, ``nohup``): one log line every ``IMGCLS_PROGRESS_INTERVAL_S`` seconds (default 15) with the
same figures, and a closing line, never a bar's ``\\r`` fragments. Torch-free; tqdm is imported
only for a terminal.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger("imgcls.progress")

INTERVAL_ENV = "IMGCLS_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 15.0
T = TypeVar("T")


def batch_images(item: Any) -> int:
    """Images in a loader item: ``(inputs, labels)`` batches count their labels; anything else counts 1."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and hasattr(item[1], "__len__"):
        return len(item[1])
    return 1


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{desc}: {done}" + (f"/{total} images ({100 * done / total:.0f}%)" if total else " images")
    text += f", {rate:.1f} img/s"
    if total and rate > 0 and done < total:
        text += f", ETA {_duration((total - done) / rate)}"
    return text


def track(items: Iterable[T], desc: str, total: int | None = None, *, enabled: bool = True,
          count: Callable[[Any], int] = batch_images, terminal: bool | None = None,
          logger: logging.Logger = log) -> Iterator[T]:
    """Yield ``items``, reporting images done (``count(item)`` each) against ``total`` images."""
    if not enabled:
        yield from items
        return
    on_terminal = sys.stderr.isatty() if terminal is None else terminal
    if on_terminal:
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
            for item in items:
                yield item
                bar.update(count(item))
        return
    started = last = time.perf_counter()
    interval, done = _interval(), 0
    for item in items:
        yield item
        done += count(item)
        now = time.perf_counter()
        if now - last >= interval and (total is None or done < total):
            logger.info("%s", _line(desc, done, total, now - started))
            last = now
    elapsed = time.perf_counter() - started
    if elapsed >= interval or interval == 0:
        logger.info("%s: %d images in %.1f s (%.1f img/s)", desc, done, elapsed, done / max(elapsed, 1e-9))
