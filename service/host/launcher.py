"""Start the real ``imgcls serve`` on a free loopback port, wait for ``/readyz``, stop it.

The one launcher the demo, the tests and the benchmarks use, plus the multipart encoding they all
send. Standard library only, so it works wherever the serving side is installed.
"""
from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import imgcls

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def encode_multipart(files: Sequence[tuple[str, bytes, str]], field_name: str = "images") -> tuple[bytes, str]:
    """``(filename, data, content_type)`` files -> (body, Content-Type header with its boundary)."""
    boundary = uuid.uuid4().hex
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        for name, data, content_type in files
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status code of a GET, or None when no HTTP server answers (nothing listens, or what listens
    speaks another protocol, such as a gRPC server's HTTP/2 frames)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError):
        return None


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path | None
    started_at: float
    probes: list[tuple[float, int | None, int | None]] = field(default_factory=list)  # (t, livez, readyz)

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the server's process group, then wait; SIGKILL only if it hangs (returns -9)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
                return -9
        return int(self.process.returncode)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child ``python -m imgcls``: it imports the same imgcls as this process."""
    env = {**os.environ, **(extra or {})}
    if len(imgcls.__path__) > 1:  # a source tree (see imgcls/__init__.py): put its root on the path
        root = str(Path(imgcls.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


PORT_TAKEN = ("Could not bind", "cannot listen on")  # BentoML's arbiter, imgcls serve's own check
PORT_ATTEMPTS = 3


def start_server(bundle: Path | str | Sequence[Path | str], log_path: Path | None = None, *, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0, host: str = LOOPBACK,
                 port: int | None = None) -> Server:
    """Run ``python -m imgcls serve BUNDLE...`` and poll /livez + /readyz from the start until ready.

``bundle``: one bundle or model repository, or several.

    Its output goes to ``log_path`` (or this process's stdout/stderr). Raises RuntimeError with the
    log's tail when it exits or is not ready in time (after stopping it). Without ``port`` a free one is
    chosen; when another process binds it first (a client's outgoing connection can take any free port
    between the choice and the server's bind), the server is started again on another (``log_path``
    needed to tell), up to ``PORT_ATTEMPTS`` times.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_once(bundle, log_path, args, env, ready_timeout, host, port or free_port(host))
        except RuntimeError as exc:
            taken = any(marker in str(exc) for marker in PORT_TAKEN)
            if port or not taken or attempt == PORT_ATTEMPTS:
                raise
            log.warning("the chosen port was taken before the server bound it: starting again on another")
    raise AssertionError("unreachable")


def _start_once(bundle: Path | str | Sequence[Path | str], log_path: Path | None, args: Sequence[str],
                env: dict[str, str] | None, ready_timeout: float, host: str, port: int) -> Server:
    bundles = [str(bundle)] if isinstance(bundle, (str, Path)) else [str(b) for b in bundle]
    command = [sys.executable, "-m", "imgcls", "serve", *bundles, "--host", host, "--port", str(port), *args]
    log_file = open(log_path, "wb") if log_path else None  # noqa: SIM115 - the child owns it
    try:
        process = subprocess.Popen(command, env=child_environment(env), stdout=log_file,
                                   stderr=subprocess.STDOUT if log_file else None, start_new_session=True)
    finally:
        if log_file:
            log_file.close()
    server = Server(process, f"http://{host}:{port}", log_path, time.monotonic())
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and process.poll() is None:
        live, ready = http_status(server.url + "/livez"), http_status(server.url + "/readyz")
        server.probes.append((time.monotonic() - server.started_at, live, ready))
        if ready == 200:
            return server
        time.sleep(0.1)
    code = server.stop()
    state = f"exited with status {code}" if process.returncode is not None and code != -9 else "not ready in time"
    raise RuntimeError(f"imgcls serve {state} ({ready_timeout:.0f} s budget):\n{server.log_tail()}")
