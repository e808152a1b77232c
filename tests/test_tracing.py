"""OpenTelemetry spans are made only when something reads them (imgcls.service.host.tracing).

Units for the decision, then the real ``imgcls serve``: with the access log on, a client's
``traceparent`` reaches the log line; with nothing reading spans, the server says they are off.
"""
from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle
from imgcls.service.host import tracing
from imgcls.service.host.launcher import start_server

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_nothing_reads_spans_so_every_url_is_excluded():
    settings = tracing.service_settings(False, {})
    assert settings == {"excluded_urls": [".*"]}
    assert tracing.spans_wanted(False, {"BENTOML_CONFIG_OPTIONS": "services.imgcls.traffic.timeout=5"}) is False
    cors = "services.imgcls.http.cors.enabled=true services.imgcls.http.cors.access_control_allow_origins=*"
    assert tracing.spans_wanted(False, {"BENTOML_CONFIG_OPTIONS": cors}) is False  # not the access log


@pytest.mark.parametrize("environ", [
    {"BENTOML_CONFIG_OPTIONS": "services.tracing.exporter_type=zipkin"},
    {"BENTOML_CONFIG_OPTIONS": "services.imgcls.logging.access.enabled=true"},
])
def test_bentoml_options_that_read_spans_leave_tracing_alone(environ):
    assert tracing.service_settings(False, environ) == {}


def test_access_log_keeps_spans():
    assert tracing.service_settings(True, {}) == {}


@pytest.mark.parametrize("text, wanted", [
    ("services:\n  tracing:\n    exporter_type: otlp\n", True),
    ("services:\n  imgcls:\n    logging:\n      access:\n        enabled: true\n", True),
    ("services:\n  imgcls:\n    traffic:\n      timeout: 5\n", False),
    ("services: [\n", True),  # unreadable: BentoML reports it; we do not override what we cannot read
])
def test_bentoml_config_file_is_read_for_tracing_or_access_log(tmp_path, text, wanted):
    path = tmp_path / "bentoml.yaml"
    path.write_text(text)
    assert tracing.spans_wanted(False, {"BENTOML_CONFIG": str(path)}) is wanted


def serve_and_classify(tmp_path, args: list[str]) -> tuple[httpx.Response, str]:
    """One /classify with a client's traceparent on a real server: the answer and the server's log."""
    bundle = make_tiny_bundle(tmp_path / "bundle")
    log_path = tmp_path / "serve.log"
    server = start_server(bundle, log_path, args=["--workers", "1", *args])
    try:
        response = httpx.post(server.url + "/classify", content=encode(make_image(64, 48, seed=3), "JPEG"),
                              headers={"Content-Type": "image/jpeg", "traceparent": TRACEPARENT}, timeout=30)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10
        while "path=/classify" not in log_path.read_text() and "--access-log" in args and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    return response, log_path.read_text()


def test_access_log_line_carries_the_clients_trace_id(tmp_path):
    response, log = serve_and_classify(tmp_path, ["--access-log"])
    assert "OpenTelemetry spans on" in log
    line = next(line for line in log.splitlines() if "path=/classify" in line)
    span = re.search(rf"trace={TRACE_ID},span=([0-9a-f]{{16}})", line)
    assert span, line
    assert response.headers["X-BentoML-Request-ID"] == span.group(1)  # BentoML's request id is the span's


def test_default_server_makes_no_spans_and_says_so(tmp_path):
    response, log = serve_and_classify(tmp_path, [])
    assert "OpenTelemetry spans off" in log
    assert "X-BentoML-Request-ID" not in response.headers  # no span was started for the request
