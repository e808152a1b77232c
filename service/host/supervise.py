"""The process ``imgcls serve`` becomes once the bundle is verified: it runs ``bentoml serve``.

``imgcls serve`` checks flags, port and bundle (the bundle check loads the model once, which brings in
ONNX Runtime and NumPy), then ``exec``s ``python -m imgcls.service.host.supervise`` in the same process (same pid,
so ``docker stop``, a process manager or Ctrl+C still signal it): the whole life of the server is
then supervised by a process that imported only the standard library, 14 MiB instead of the 95 MiB
the checks leave behind (measured, MobileNet-v2 bundle).

It creates the server's state directory (readiness markers, the connection board, BentoML's home for
its Prometheus files), starts the command in its own session, passes SIGTERM/SIGINT on, and after a
stop signal waits ``--grace`` + ``KILL_MARGIN_S`` before killing the group. SIGTERM exits 0, SIGINT 130.

With ``--check-pid``, ``imgcls serve`` still verifies the bundles in a forked child (this process's
child after the ``exec``) while BentoML starts: the workers wait for ``<state_dir>/checked``
(``IMGCLS_AWAIT_CHECK``) before they load a model, and the server's output is held. When the check
passes, the marker is written and the output flows; when it fails, the server is killed before it
served anything, its output is dropped, and this process exits with the check's status (2: its one
line said why).
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
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("imgcls.serve")
KILL_MARGIN_S = 1.5  # after the grace period, how long the workers get to exit before SIGKILL
STATE_DIR_VARIABLE = "IMGCLS_STATE_DIR"
CHECK_VARIABLE = "IMGCLS_AWAIT_CHECK"  # true: the workers wait for CHECKED_MARKER before loading models
CHECKED_MARKER = "checked"  # in the state directory: the bundle check passed


class HeldOutput:
    """The server's output, held until the bundle check is settled: then written out, or dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "held"
        self._held: list[tuple[Any, bytes]] = []

    def write(self, sink: Any, data: bytes) -> None:
        with self._lock:
            if self._state == "held":
                self._held.append((sink, data))
            elif self._state == "open":
                sink.write(data)
                sink.flush()

    def settle(self, passed: bool) -> None:
        with self._lock:
            self._state = "open" if passed else "dropped"
            held, self._held = self._held, []
            for sink, data in held if passed else []:
                sink.write(data)
                sink.flush()

    def relay(self, source: Any, sink: Any) -> threading.Thread:
        """Copy ``source`` (a pipe) through this gate to ``sink`` until the pipe closes."""
        def pump() -> None:
            for data in iter(lambda: os.read(source.fileno(), 65536), b""):
                self.write(sink, data)

        thread = threading.Thread(target=pump, name="imgcls-relay", daemon=True)
        thread.start()
        return thread


class BundleCheck:
    """Waits for the forked bundle check: passed -> marker + output; failed -> kill the server."""

    def __init__(self, pid: int, marker: Path, output: HeldOutput) -> None:
        self.pid, self.marker, self.output = pid, marker, output
        self.code: int | None = None  # the status of a failed check
        self._abandoned = self._reaped = False
        self._done = threading.Event()

    def watch(self, server: subprocess.Popen) -> None:
        def wait() -> None:
            _, status = os.waitpid(self.pid, 0)
            self._reaped = True
            code = os.waitstatus_to_exitcode(status)
            if self._abandoned:  # the server ended first (a stop signal, a crash): show what it said
                self.output.settle(True)
            elif code == 0:
                self.marker.write_text("passed")
                self.output.settle(True)
            else:
                self.code = code
                try:
                    os.killpg(server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.output.settle(False)
            self._done.set()

        threading.Thread(target=wait, name="imgcls-bundle-check", daemon=True).start()

    def end(self) -> int | None:
        """After the server ended: the status of a failed check, else None (a running check is stopped)."""
        if not self._done.wait(0.05):
            self._abandoned = True
            if not self._reaped:  # never signal a pid already reaped (it may be reused)
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._done.wait(5)
        return self.code


def run_server(command: list[str], env: dict[str, str], cwd: str, grace_s: float = 8.0,
               check: BundleCheck | None = None) -> int:
    pipe = subprocess.PIPE if check else None
    child = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, stdout=pipe, stderr=pipe)
    relays = [check.output.relay(child.stdout, sys.stdout.buffer), check.output.relay(child.stderr, sys.stderr.buffer)
              ] if check else []
    if check:
        check.watch(child)
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
    check_code = check.end() if check else None
    for relay in relays:
        relay.join(2.0)
    if check_code:
        return check_code if check_code > 0 else 128 - check_code
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


def supervise(command: list[str], cwd: str, grace_s: float, check_pid: int = 0) -> int:
    """Run ``command`` with a fresh state directory (``IMGCLS_STATE_DIR``), removed afterwards."""
    state_dir = tempfile.mkdtemp(prefix="imgcls-serve-")
    # BentoML keeps the workers' Prometheus files in $BENTOML_HOME/prometheus_multiproc_dir and wipes
    # it when a server starts: with a shared home, every server on the host would mix (and reset)
    # the others' metrics. Serving an import path needs nothing else from the home.
    env = {**os.environ, STATE_DIR_VARIABLE: state_dir, "BENTOML_HOME": str(Path(state_dir) / "bentoml")}
    check = None
    if check_pid:
        env[CHECK_VARIABLE] = "true"
        check = BundleCheck(check_pid, Path(state_dir) / CHECKED_MARKER, HeldOutput())
    try:
        return run_server(command, env, cwd, grace_s, check)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="run a command as imgcls serve's server (see the module doc)")
    parser.add_argument("--grace", type=float, required=True, help="seconds the server gets to drain")
    parser.add_argument("--cwd", required=True, help="the command's working directory")
    parser.add_argument("--check-pid", type=int, default=0,
                        help="a child verifying the bundles: the server waits for it (see the module doc)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return supervise(command, args.cwd, args.grace, args.check_pid)


if __name__ == "__main__":
    sys.exit(main())
