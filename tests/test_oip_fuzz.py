"""A schema fuzzer (schemathesis, in a virtualenv of its own) over the `/v2` routes of a real
`imgcls serve`, driven by the OpenAPI document the server publishes (`/docs.json`): examples,
coverage and fuzzing phases, with the served model's name and version as path parameters so that
generated bodies reach the infer parser. No answer may be a 5xx, every answer must match its
documented status and schema, and the server answers afterwards."""
from __future__ import annotations

import subprocess

import httpx
import pytest

from imgcls.service.host.launcher import start_server
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow  # a venv built from PyPI on first use, a bundle export, a server, ~500 requests


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer_under_v2(tmp_path):
    from benchmarks import peer_env

    env = peer_env.ensure("schemathesis")
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with start_server(bundle, tmp_path / "serve.log", args=["--model-name", "m"]) as server:
        schema = tmp_path / "openapi.json"
        schema.write_text(httpx.get(server.url + "/docs.json", timeout=30).text)
        version = httpx.get(server.url + "/v2/models/m", timeout=30).json()["versions"][0]
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\n"path.name" = "m"\n"path.version" = "{version}"\n')
        run = subprocess.run(
            [str(env.python.parent / "schemathesis"), "--config-file", str(config), "run", str(schema),
             "--url", server.url, "--include-path-regex", "^/v2", "--phases", "examples,coverage,fuzzing",
             "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance",
             "--max-examples", "40", "--seed", "27"],
            capture_output=True, text=True, timeout=600, env=env.environment(),
            cwd=tmp_path)  # its example cache (.schemathesis/) stays out of the checkout
        assert run.returncode == 0, run.stdout[-6000:]
        assert " passed" in run.stdout and "Tested: 11" in run.stdout, run.stdout[-3000:]  # every /v2 operation
        assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200
        assert httpx.get(server.url + "/v2/models/m/ready", timeout=10).status_code == 200
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
