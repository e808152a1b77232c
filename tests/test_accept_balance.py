"""Keep-alive connections opened together spread over the workers (least-connections accept)."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import psutil
import pytest

from imgcls.service.host import accept
from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.host.launcher import LOOPBACK, start_server
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle

CLIENTS = 16


def test_the_board_sees_only_live_other_workers(tmp_path):
    mine, other = WorkerBoard(tmp_path / "board", 1), WorkerBoard(tmp_path / "board", 2)
    assert mine.least_elsewhere(2) == (2, 0) and other.least_elsewhere(2) == (1, 0)
    other.publish(5)
    mine.publish(2)
    assert mine.least_elsewhere(2) == (2, 5) and other.least_elsewhere(2) == (1, 2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other.pid = int(dead.stdout)  # a worker that died (its slot keeps a stale count)
    other.publish(0)
    assert mine.least_elsewhere(2) is None, "a dead worker's slot does not count"


def test_the_count_is_republished_fast_while_it_moves_and_rarely_while_it_holds(tmp_path):
    """Closed connections have no hook, so the count is republished; idle, that cost 100 wake-ups a second."""
    board, count, writes = WorkerBoard(tmp_path / "board", 0), [3], []
    publish = board.publish
    board.publish = lambda n: (writes.append((time.monotonic(), n)), publish(n))[1]  # record, then write

    async def run() -> float:
        loop = asyncio.get_running_loop()
        accept._keep_publishing(loop, board, lambda: count[0])
        await asyncio.sleep(1.0)  # steady at 3
        count[0] = 1  # two connections closed
        changed_at = time.monotonic()
        await asyncio.sleep(accept.PUBLISH_STEADY_MAX_S + 0.1)
        return changed_at

    changed_at = asyncio.run(run())
    steady = [t for t, n in writes if t < changed_at]
    assert 4 <= len(steady) <= 12, len(steady)  # 10, 20, 40, ... 250 ms: not the 100 of a fixed 10 ms tick
    assert board.published() == 1
    first_low = min(t for t, n in writes if n == 1)
    assert first_low - changed_at <= accept.PUBLISH_STEADY_MAX_S + 0.05  # a drop shows within one steady interval


def _worker_connections(server_pid: int, port: int) -> list[int]:
    counts = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            held = [c for c in child.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port]
        except psutil.Error:
            continue
        if held or "bentoml" in " ".join(child.cmdline()) and "--worker-id" in child.cmdline():
            counts.append(len(held))
    return sorted(counts)


@pytest.mark.slow
def test_connections_opened_together_are_shared_by_the_workers(tmp_path):
    bundle = make_tiny_bundle(tmp_path)
    request = encode(make_image(40, 30, seed=1))
    with start_server(bundle, tmp_path / "serve.log", env={"IMGCLS_WORKERS": "2"}) as server:  # the default
        port = int(server.url.rsplit(":", 1)[1])
        clients = [socket.create_connection((LOOPBACK, port)) for _ in range(CLIENTS)]  # together, like a pool
        try:
            head = (f"POST /classify HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(request)}\r\n\r\n").encode()
            for client in clients:
                client.sendall(head + request)
            for client in clients:
                client.settimeout(30)
                assert client.recv(12).startswith(b"HTTP/1.1 200"), "every connection is answered"
            time.sleep(0.2)
            counts = _worker_connections(server.process.pid, port)
        finally:
            for client in clients:
                client.close()
    assert sum(counts) == CLIENTS and len(counts) == 2, counts
    assert min(counts) >= CLIENTS // 4, f"connections per worker {counts}: one worker took (nearly) all of them"
