"""Answers BentoML's traffic middlewares give outside the service's own middlewares (the request
timeout's 504, ``max_concurrency``'s 429) are counted in ``imgcls_http_requests`` like every other.

A real `imgcls serve` (1 worker, 1 request at a time, a 2 s timeout): a slow upload holds the only
slot until the timeout answers it, and a request sent meanwhile is refused with 429.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from imgcls.service.host.launcher import start_server
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow  # a bundle export and a server start
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("traffic-bundle"))
    env = {"IMGCLS_WORKERS": "1", "IMGCLS_MAX_CONCURRENCY": "1", "IMGCLS_TIMEOUT": str(TIMEOUT_S)}
    handle = start_server(bundle, tmp_path_factory.mktemp("traffic-log") / "serve.log", env=env)
    yield handle
    handle.stop()


def counted(client: httpx.Client, status: int) -> float:
    series = f'imgcls_http_requests_total{{method="POST",route="/classify",status="{status}"}} '
    line = next((line for line in client.get("/metrics").text.splitlines() if line.startswith(series)), None)
    return float(line.split()[-1]) if line else 0.0


def slow_body():
    yield b"\x89PNG\r\n\x1a\n"
    for _ in range(int(TIMEOUT_S * 2 + 2)):  # still sending when the timeout answers
        time.sleep(0.5)
        yield b"\0" * 16


def test_timeout_and_concurrency_answers_are_counted(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        before = {status: counted(client, status) for status in (429, 500, 504)}
        outcome: list = []

        def upload() -> None:
            try:
                outcome.append(client.post("/classify", content=slow_body(),
                                           headers={"content-type": "image/png"}).status_code)
            except httpx.TransportError as exc:  # the server answered 504 and closed while we still sent
                outcome.append(exc)

        holder = threading.Thread(target=upload)
        holder.start()
        time.sleep(0.8)  # the upload holds the only slot
        with httpx.Client(base_url=server.url, timeout=30.0) as other:
            refused = other.post("/classify", content=b"\x89PNG\r\n\x1a\n", headers={"content-type": "image/png"})
        assert refused.status_code == 429, refused.text
        holder.join(30)
        assert outcome and (outcome[0] == 504 or isinstance(outcome[0], httpx.TransportError)), outcome
        deadline = time.monotonic() + 5
        while counted(client, 504) == before[504] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted(client, 429) - before[429] == 1
        assert counted(client, 504) - before[504] == 1
        assert counted(client, 500) == before[500]  # the timed-out request is not counted as a 500 too
