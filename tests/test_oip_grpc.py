"""The Open Inference Protocol over gRPC on a real `imgcls serve --grpc-port`, with API keys: the
`authorization: Bearer <key>` metadata, health open by default, the metrics counting gRPC calls by
method, model and reason, and the start-time checks of the port (exit 2, one line)."""
from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from imgcls.service.host.launcher import LOOPBACK, child_environment, free_port, start_server
from tests.conftest import encode, make_image, metric_values
from tests.factories import make_tiny_bundle, start_keyed_server

pytestmark = pytest.mark.slow  # a bundle export and a server start

KEY = "grpc-k3y-5e1f"
IMAGE = encode(make_image(64, 48, seed=3))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("grpc-bundle"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    grpc_port = free_port()
    handle = start_keyed_server(bundle, tmp_path_factory.mktemp("grpc"), f"{KEY}\n",
                                ["--grpc-port", str(grpc_port), "--model-name", "m"])
    handle.grpc_url = f"{LOOPBACK}:{grpc_port}"
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.grpc_url)


def image_input() -> triton.InferInput:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([IMAGE], dtype=object))
    return tensor


def grpc_counts(server) -> dict[str, float]:
    """Every series of the server's metrics (the gRPC routes' counts, the gRPC call durations' by method)."""
    return metric_values(httpx.get(server.url + "/metrics", timeout=10, trust_env=False).text)  # public by default


def test_api_keys_over_grpc(server, client):
    before = grpc_counts(server)
    assert client.is_server_live() and client.is_server_ready()  # health: open without a key
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("m", headers=headers)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED" and "API key" in raised.value.message()
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("m", [image_input()])
    good = {"authorization": f"Bearer {KEY}"}
    assert client.get_model_metadata("m", headers=good).name == "m"
    assert client.is_model_ready("m.image", headers=good)
    result = client.infer("m.image", [image_input()], headers=good)
    assert result.as_numpy("probabilities").shape == (1, 3)
    after = grpc_counts(server)

    def delta(labels: str, name: str = "imgcls_oip_requests_total") -> float:
        series = f"{name}{{{labels}}}"
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert delta('model="m",outcome="ok",reason="none",route="grpc:ModelInfer"') == 1  # the view counts as its model
    assert delta('model="m",outcome="rejected",reason="unauthorized",route="grpc:ModelInfer"') == 1
    assert delta('model="m",outcome="rejected",reason="unauthorized",route="grpc:ModelMetadata"') == 3
    assert delta('model="",outcome="ok",reason="none",route="grpc:ServerLive"') == 1
    timed = {"ModelInfer": 2, "ModelMetadata": 4, "ModelReady": 1, "ServerLive": 1, "ServerReady": 1}  # answered or not
    for method, calls in timed.items():
        assert delta(f'method="{method}"', "imgcls_grpc_request_duration_seconds_count") == calls, method
    assert KEY not in server.log_tail(200_000)


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=child_environment())


def test_a_grpc_port_in_use_or_equal_to_the_http_port_exits_2(bundle):
    port = free_port()
    result = serve(str(bundle), "--port", str(port), "--grpc-port", str(port))
    assert result.returncode == 2 and "--grpc-port must differ from --port" in result.stderr, result.stderr
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        result = serve(str(bundle), "--port", str(free_port()), "--grpc-port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_drains_grpc_calls(bundle, tmp_path):
    """16 tritonclient.grpc clients (a connection each) calling in a loop on two workers when the server gets
    SIGTERM: every call either answers or, once the server stopped taking calls, fails with UNAVAILABLE
    (retryable); the calls running at SIGTERM answer. Before the worker's shutdown waited for the gRPC
    server's grace, a call still running when the event loop ended came back CANCELLED (about 1 client
    in 9). The server exits 0."""
    import threading
    import time

    import grpc

    grpc_port = free_port()
    server = start_server(bundle, tmp_path / "serve.log", args=["--grpc-port", str(grpc_port), "--workers", "2"])
    calls: list[tuple[float, float, str]] = []  # (started, ended, status: "OK" or the error's code)
    ready = threading.Barrier(17)

    def loop() -> None:
        client = triton.InferenceServerClient(f"{LOOPBACK}:{grpc_port}")
        client.infer(bundle.name, [image_input()])  # this client's connection is open before the load
        ready.wait()
        for _ in range(2000):
            started = time.monotonic()
            try:
                client.infer(bundle.name, [image_input()])
                calls.append((started, time.monotonic(), "OK"))
            except InferenceServerException as exc:
                calls.append((started, time.monotonic(), str(exc.status())))
                return

    threads = [threading.Thread(target=loop) for _ in range(16)]
    for thread in threads:
        thread.start()
    ready.wait(60)
    threading.Event().wait(1.5)
    sigterm = time.monotonic()
    assert server.stop() == 0, server.log_tail()
    for thread in threads:
        thread.join(30)
    failed = [(round(start - sigterm, 3), status) for start, _, status in calls if status != "OK"]
    assert {status for _, status in failed} <= {str(grpc.StatusCode.UNAVAILABLE)}, failed
    running = [status for start, end, status in calls if start < sigterm < end]
    assert "OK" in running, (running, failed)  # calls running at SIGTERM answered
    assert len(failed) == 16, failed  # every client ended on UNAVAILABLE once the server stopped


def test_the_readiness_probe_reads_a_grpc_listener_as_no_http_server():
    """The launcher's probe answers None, not an exception, when a port speaks HTTP/2 frames (a gRPC
    server) instead of HTTP/1.1: start_server keeps polling and reports the log if never ready."""
    from concurrent import futures

    import grpc

    from imgcls.service.host.launcher import http_status

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        assert http_status(f"http://{LOOPBACK}:{port}/readyz") is None
    finally:
        server.stop(0)
