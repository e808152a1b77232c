"""Ray's own output kept out of ``imgcls score --engine ray``'s stderr (stdlib only).

Ray writes to the driver's stderr from three places; each keeps its full log under
``/tmp/ray/session_*/logs`` whatever is done here:

* its Python logger ``ray``: ``ray.init(logging_level=RAY_LOG_LEVEL)``, and the output of the
  actors and Ray's other processes, which ``ray.init(log_to_driver=False)`` leaves in their log
  files (``ray_engine.connected``): a failed job is one ``EngineError`` line naming the actor's error;
* Ray Data's logger ``ray.data``, whose console handler prints INFO lines (execution plans,
  "Progress bars disabled" ...) and a failed job's stack trace at ERROR: ``quiet_ray_data`` raises
  that handler, not the file's, to CRITICAL;
* its native (C++) core worker, which prints ERROR lines such as
  ``[2026-01-01 00:00:00,000 E 123 123] core_worker.cc:2465: Actor ... has constructor arguments in
  the object store ...`` (a Ray Data artefact, ray-project/ray#57733) straight to file descriptor 2,
  also as ``(raylet)`` lines forwarded from other processes: ``native_lines_dropped`` passes the
  process's stderr through a filter that drops exactly those lines.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from typing import Iterator

RAY_LOG_LEVEL = logging.ERROR
# "[2026-12-07 01:17:06,539 E 17347 17347] core_worker.cc:2465: ...", optionally behind a coloured
# "(raylet) " / "(MapWorker pid=1) " prefix when forwarded from another process
NATIVE_LINE = re.compile(rb"^(\x1b\[[0-9;]*m)?(\([^)]*\)(\x1b\[[0-9;]*m)? )?"
                         rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWEF] \d+ \d+\] ")


def quiet_ray_data() -> None:
    """Ray Data's console handler at CRITICAL (its file handler keeps everything)."""
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":
            handler.setLevel(logging.CRITICAL)


def _pump(source: int, target: int) -> None:
    pending = b""
    while True:
        chunk = os.read(source, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
        if kept:
            os.write(target, kept)
    if pending and not NATIVE_LINE.match(pending):
        os.write(target, pending)
    os.close(source)


@contextlib.contextmanager
def native_lines_dropped() -> Iterator[None]:
    """For the block, this process's stderr (fd 2) without Ray's native log lines."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)  # processes started meanwhile (a local Ray) write through the filter too
    os.close(write_end)
    pump = threading.Thread(target=_pump, args=(read_end, original), name="ray-stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the pump drains it and ends
        pump.join(timeout=5)
        os.close(original)
