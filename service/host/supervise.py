"""The process ``imgcls serve`` becomes once the bundle is verified: it runs ``bentoml serve``.

``imgcls serve`` checks flags, port and bundle (loading the model once, which brings in ONNX Runtime
and NumPy), then ``exec``s ``python -m imgcls.service.host.supervise`` in the same process (same pid,
so ``docker stop``, a process manager or Ctrl+C still signal it): the whole life of the server is
then supervised by a process that imported only the standard library, 14 MiB instead of the 95 MiB
the checks leave behind (measured, MobileNet-v2 bundle).

It creates the server's state directory (readiness markers, the connection board, BentoML's home for
its Prometheus files), starts the command in its own session, passes SIGTERM/SIGINT on, and after a
stop signal waits ``--grace`` + ``KILL_MARGIN_S`` before killing the group. SIGTERM exits 0, SIGINT 130.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("imgcls.serve")
KILL_MARGIN_S = 1.5  # after the grace period, how long the workers get to exit before SIGKILL
STATE_DIR_VARIABLE = "IMGCLS_STATE_DIR"


def run_server(command: list[str], env: dict[str, str], cwd: str, grace_s: float = 8.0) -> int:
    child = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _wait(child, stopping, grace_s + KILL_MARGIN_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        log.info("server stopped")
        return 128 + signal.SIGINT if signal.SIGINT in stopping else 0
    return code if code >= 0 else 128 - code


def _wait(child: subprocess.Popen, stopping: list[int], limit_s: float) -> int:
    """Wait for the server; once a stop signal came, at most ``limit_s`` more, then kill its group."""
    deadline: float | None = None
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if not stopping:
                continue
            deadline = deadline or time.monotonic() + limit_s
            if time.monotonic() > deadline:
                log.error("the server did not stop %.0f s after the signal; killing it", limit_s)
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return 1


def supervise(command: list[str], cwd: str, grace_s: float) -> int:
    """Run ``command`` with a fresh state directory (``IMGCLS_STATE_DIR``), removed afterwards."""
    state_dir = tempfile.mkdtemp(prefix="imgcls-serve-")
    # BentoML keeps the workers' Prometheus files in $BENTOML_HOME/prometheus_multiproc_dir and wipes
    # it when a server starts: with a shared home, every server on the host would mix (and reset)
    # the others' metrics. Serving an import path needs nothing else from the home.
    env = {**os.environ, STATE_DIR_VARIABLE: state_dir, "BENTOML_HOME": str(Path(state_dir) / "bentoml")}
    try:
        return run_server(command, env, cwd, grace_s)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="run a command as imgcls serve's server (see the module doc)")
    parser.add_argument("--grace", type=float, required=True, help="seconds the server gets to drain")
    parser.add_argument("--cwd", required=True, help="the command's working directory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return supervise(command, args.cwd, args.grace)


if __name__ == "__main__":
    sys.exit(main())
