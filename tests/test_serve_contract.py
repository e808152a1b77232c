"""`imgcls serve` as documented: every flag explained and read from exactly IMGCLS_<FLAG>, bad values
named by flag, GET /classify answered in JSON like every other error, Ctrl+C exits 130.

One real server (1 worker) for the module; it is stopped with SIGINT by the last test.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.peer_servers import tree_pids
from imgcls.service.host.config import ConfigError, ServiceConfig
from imgcls.service.host.launcher import start_server
from imgcls.service.host.serve import FLAG_FIELDS, build_parser, config_from
from tests.conftest import encode, make_image, thread_placement
from tests.factories import make_tiny_bundle

# a valid value for each flag that differs from its default
VALUES = {"device": "cpu", "precision": "int8", "workers": "3", "threads": "2", "decode_threads": "3",
          "work_niceness": "5",
          "max_batch_size": "4", "batch_wait_ms": "2.5", "max_queue_images": "300", "max_body_bytes": "1000",
          "max_images": "5", "max_image_bytes": "999", "max_pixels": "12345", "default_top_k": "2",
          "timeout": "7.5", "max_concurrency": "9", "model_name": "my-model", "grace": "4.5",
          "poll_s": "2.5", "api_keys_file": "/keys.txt", "public_routes": "health", "grpc_port": "50051"}


def test_every_flag_reads_exactly_imgcls_flag(tmp_path):
    assert set(VALUES) == set(FLAG_FIELDS)
    for flag, field_name in FLAG_FIELDS.items():
        variable = "IMGCLS_" + flag.upper()
        args = build_parser().parse_args([str(tmp_path)])
        config = config_from(args, {variable: VALUES[flag]})
        default = getattr(ServiceConfig(), field_name)
        assert str(getattr(config, field_name)) == VALUES[flag] != str(default), variable
        assert config.to_env()[variable] == VALUES[flag]  # what the workers read back


def test_help_explains_every_flag_and_the_top_k_precedence(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAG_FIELDS:
        assert f"$IMGCLS_{flag.upper()}" in text, flag
    assert "0 = auto" in text and "0 = unlimited" in text and "0 = no wait" in text
    assert "wins over ?top_k=" in text
    actions = {a.dest: a for a in build_parser()._actions}
    for field_name in FLAG_FIELDS.values():
        explanation = actions[field_name].help.split("; $IMGCLS_")[0]
        assert len(explanation.split()) >= 4, (field_name, explanation)


def test_bad_values_name_the_flag_and_the_variable(tmp_path):
    args = build_parser().parse_args([str(tmp_path), "--max-images", "0"])
    with pytest.raises(ConfigError, match="--max-images / IMGCLS_MAX_IMAGES must be > 0"):
        config_from(args, {})
    with pytest.raises(ConfigError, match="IMGCLS_TIMEOUT: expected a float"):
        ServiceConfig.from_env({"IMGCLS_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="--work-niceness / IMGCLS_WORK_NICENESS must be 0-19, got 20"):
        ServiceConfig(work_niceness=20)
    assert dataclasses.replace(ServiceConfig(), timeout=3.0).to_env()["IMGCLS_TIMEOUT"] == "3.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("contract-bundle"))
    handle = start_server(bundle, tmp_path_factory.mktemp("contract-log") / "serve.log",
                          env={"IMGCLS_TIMEOUT": "30"})
    yield handle
    handle.stop()


@pytest.mark.slow
def test_get_classify_answers_json_405(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(method, "/classify")
            assert response.status_code == 405, (method, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert response.headers["allow"] == "POST"
            error = response.json()["error"]
            assert (error["status"], error["reason"]) == (405, "method_not_allowed") and "POST" in error["message"]
        assert client.get("/readyz").status_code == 200  # the server is unharmed


def worker_threads(supervisor: int) -> dict[int, dict[int, int]]:
    """The server's worker processes (descendants running BentoML's worker) -> their threads -> nice value."""
    return {pid: {tid: nice for tid, (_, nice, _) in thread_placement(pid).items()}
            for pid in tree_pids(supervisor) if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values are per thread on Linux only")
def test_computing_threads_yield_to_the_request_threads(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:  # the decode pool starts with the first image
        response = client.post("/classify", files=[("images", ("a.png", encode(make_image()), "image/png"))])
        assert response.status_code == 200, response.text
    workers = worker_threads(server.process.pid)
    assert workers and all(threads[pid] == 0 for pid, threads in workers.items())  # the event loops keep theirs
    niceness = ServiceConfig().work_niceness
    lowered = {pid: sum(nice == niceness for nice in threads.values()) for pid, threads in workers.items()}
    assert min(lowered.values()) >= 1, workers  # every worker's inference thread
    assert max(lowered.values()) >= 2, workers  # and the answering worker's decode thread (started on demand)
    assert all(set(threads.values()) <= {0, niceness} for threads in workers.values()), workers


@pytest.mark.slow
def test_ctrl_c_exits_130(server):
    os.killpg(server.process.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends: the whole group
    assert server.process.wait(30) == 130, server.log_tail()
    assert "Traceback" not in server.log_tail()


@pytest.mark.slow
def test_the_launcher_starts_again_on_another_port_when_its_choice_was_taken(tmp_path, monkeypatch):
    from imgcls.service.host import launcher

    with socket.socket() as taken:  # what a client's outgoing connection or another server did meanwhile
        taken.bind((launcher.LOOPBACK, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        choices = iter([busy])
        real_free_port = launcher.free_port
        monkeypatch.setattr(launcher, "free_port",
                            lambda host=launcher.LOOPBACK: next(choices, None) or real_free_port(host))
        server = launcher.start_server(make_tiny_bundle(tmp_path / "bundle"), tmp_path / "serve.log")
        try:
            port = int(server.url.rsplit(":", 1)[1])
            assert port != busy and httpx.get(server.url + "/readyz", timeout=10, trust_env=False).status_code == 200
        finally:
            assert server.stop() == 0
        with pytest.raises(RuntimeError, match="cannot listen on"):  # a port the caller chose is not changed
            launcher.start_server(make_tiny_bundle(tmp_path / "bundle2"), tmp_path / "serve2.log", port=busy)
