"""A SIGKILLed `imgcls serve` supervisor takes its server (arbiter and workers) with it on Linux.

The real `imgcls serve` (2 workers): the supervisor gets SIGKILL, so it cannot pass a signal on; the
server must still exit (parent-death signal -> the usual SIGTERM drain) and free the port.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

import psutil
import pytest

from imgcls.service.host.launcher import http_status, start_server
from tests.factories import make_tiny_bundle

EXIT_LIMIT_S = 30.0


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of closed probes is fine
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
def test_server_exits_when_its_supervisor_is_sigkilled(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    server = start_server(bundle, tmp_path / "serve.log", env={"IMGCLS_WORKERS": "2"})
    tree = psutil.Process(server.process.pid).children(recursive=True)  # recorded before the kill
    try:
        names = [" ".join(p.cmdline()) for p in tree]
        assert sum("-m bentoml serve" in n for n in names) == 1, names  # the arbiter
        assert sum("_bentoml_impl.worker.service" in n for n in names) == 2, names
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(10) == -signal.SIGKILL
        started = time.monotonic()
        _gone, alive = psutil.wait_procs(tree, timeout=EXIT_LIMIT_S)
        assert not alive, f"still running {EXIT_LIMIT_S:.0f} s after the supervisor died: {alive}\n{server.log_tail()}"
        address = urlsplit(server.url)
        assert http_status(server.url + "/livez") is None
        assert _port_is_free(address.hostname, address.port)
        assert time.monotonic() - started < EXIT_LIMIT_S
    finally:
        for process in tree:  # never leave a server behind, whatever failed above
            try:
                process.kill()
            except psutil.Error:
                continue
