"""What BentoML costs by itself: a no-op service (``peer_apps/bentoml_floor.py``) served by
``bentoml serve`` with imgcls's worker count; start to the first answer and peak RSS per process.

    .venv/bin/python -m benchmarks.bentoml_floor [--workers N]   (also run by benchmarks.peers)

imgcls serves through BentoML (the design card), so its start-to-ready and memory cannot go below
these figures; the peers (a Rust front end, a Python process per stage) are not bound by them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Request
from benchmarks.peer_servers import first_answer, peak_rss
from benchmarks.report import setup_logging, stop_group

log = logging.getLogger("bench.bentoml_floor")
APP_DIR = Path(__file__).resolve().parent / "peer_apps"
PING = Request("POST", "/ping", b'{"text": "x"}', "application/json")


def measure(workers: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Start the no-op service, time it to its first answer, read its peak RSS, stop it."""
    from imgcls.service.host.launcher import free_port

    port = free_port()
    env = {**os.environ, "FLOOR_WORKERS": str(workers)}
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")  # as imgcls serve runs BentoML: no usage reports on the way up
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bentoml_floor:Floor", "--host", "127.0.0.1",
                                "--port", str(port), "--working-dir", str(APP_DIR)], cwd=APP_DIR, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            ready_s = first_answer(process, port, PING, started, timeout_s)
        except RuntimeError as exc:
            raise RuntimeError(f"the no-op BentoML service did not answer: {exc}") from None
        memory = peak_rss(process.pid)
    finally:
        stop_group(process, wait_s=10)
    return {"workers": workers, "ready_s": round(ready_s, 3), **memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    log.info("%s", json.dumps(measure(args.workers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
