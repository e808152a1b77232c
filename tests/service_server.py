"""Start the real ``imgcls serve`` (``bentoml serve``) on a free loopback port, watch it, stop it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path
    started_at: float
    probes: list[tuple[float, int | None, int | None]] = field(default_factory=list)  # (t, livez, readyz)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL (and fail loudly in the caller) only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
                return -9
        return self.process.returncode


def _status(client: httpx.Client, path: str) -> int | None:
    try:
        return client.get(path, timeout=1.0).status_code
    except httpx.HTTPError:
        return None


def start_server(bundle: Path, log_path: Path, *, env: dict[str, str] | None = None, args: list[str] = (),
                 ready_timeout: float = 60.0) -> Server:
    """Run ``python -m models.cli serve`` and poll /livez + /readyz from the start until ready."""
    port = free_port()
    command = [sys.executable, "-m", "models.cli", "serve", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log_file.close()
    server = Server(process, f"http://127.0.0.1:{port}", log_path, time.monotonic())
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(base_url=server.url) as client:
        while time.monotonic() < deadline and process.poll() is None:
            live, ready = _status(client, "/livez"), _status(client, "/readyz")
            server.probes.append((time.monotonic() - server.started_at, live, ready))
            if ready == 200:
                return server
            time.sleep(0.1)
    code = server.stop()
    raise RuntimeError(f"server not ready (exit {code}):\n{server.log_tail()}")
