"""The process ``imgcls serve`` becomes once flags, ports and sources check out: it runs the server.

``imgcls serve`` checks flags, variables, ports and sources (no model loaded), then ``exec``s
``python -m imgcls.service.host.supervise`` in the same process (same pid, so ``docker stop``, a process
manager or Ctrl+C still signal it): the whole life of the server is supervised by a process that
imported only the standard library (14 MiB). The command it runs is the arbiter
(``imgcls.service.host.arbiter``: verifies the bundles while BentoML's CLI loads, then is ``bentoml
serve``); its exit status, 2 for a bundle refused there, is this process's.

It creates the server's state directory (readiness markers, the connection board, BentoML's home for
its Prometheus files), starts the command in its own session, passes SIGTERM/SIGINT on, and after a
stop signal waits ``--grace`` + ``KILL_MARGIN_S`` before killing the group. SIGTERM exits 0, SIGINT 130.
On Linux the server also gets SIGTERM (and drains as usual) when the supervisor dies without passing a
signal on (SIGKILL, the OOM killer): a parent-death signal set in the child before ``exec``. Elsewhere
such a server keeps running until it is stopped by hand.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("imgcls.serve")
KILL_MARGIN_S = 1.5  # after the grace period, how long the workers get to exit before SIGKILL
STATE_DIR_VARIABLE = "IMGCLS_STATE_DIR"


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux; else None).

    The kernel sends it when the *thread* that forked the child exits: call ``Popen`` from the main
    thread. The setting survives ``exec``. If this process died before the child set it, the child
    has already been re-parented and will never get the signal, so it exits at once instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(1)
        if os.getppid() != parent:
            os._exit(0)

    return set_parent_death_signal


def run_server(command: list[str], env: dict[str, str], cwd: str, grace_s: float = 8.0) -> int:
    # the supervisor is single-threaded, so a preexec_fn is safe here
    child = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True,  # noqa: PLW1509
                             preexec_fn=die_with_this_process())
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
