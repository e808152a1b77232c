"""KServe's own Python clients (the `kserve` package, in a virtualenv of its own: it pins protobuf and
psutil and brings uvloop) against a real `imgcls serve --grpc-port`: `InferenceRESTClient` with the v2
protocol and `InferenceGRPCClient` report the server live and ready, the model ready (an unknown one
not), and infer a JPEG as a BYTES element with the answer tritonclient gets for the same file."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import tritonclient.http as triton

from imgcls.service.host.launcher import LOOPBACK, free_port, start_server
from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow  # a venv built from PyPI on first use (~1 min), a bundle export, a server

CHECK = REPO_ROOT / "tests" / "clients" / "kserve_check.py"


def test_kserve_clients_over_rest_and_grpc(tmp_path):
    from benchmarks import peer_env

    env = peer_env.ensure("kserve")
    bundle = make_tiny_bundle(tmp_path / "bundle")
    jpeg = tmp_path / "x.jpg"
    jpeg.write_bytes(encode(make_image(80, 60, seed=4), "JPEG"))
    grpc_port = free_port()
    with start_server(bundle, tmp_path / "serve.log", args=["--grpc-port", str(grpc_port), "--model-name", "m"]) as server:
        run = subprocess.run([str(env.python), str(CHECK), server.url, f"{LOOPBACK}:{grpc_port}", "m", str(jpeg)],
                             capture_output=True, text=True, timeout=180, env=env.environment())
        assert run.returncode == 0, run.stderr[-3000:]
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([jpeg.read_bytes()], dtype=object))
        expected = triton.InferenceServerClient(server.url.removeprefix("http://")).infer("m", [tensor])
        expected = expected.as_numpy("probabilities")
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    for transport in ("rest", "grpc"):
        assert answers[f"{transport}_live"] and answers[f"{transport}_ready"] and answers[f"{transport}_model_ready"]
        answer = answers[transport]
        assert answer["model_name"] == "m" and answer["id"] == f"kserve-{transport}"
        assert answer["outputs"] == ["probabilities"]
        np.testing.assert_array_equal(np.asarray(answer["probabilities"], dtype=np.float32), expected)
    assert answers["rest_unknown_model_ready"] is False
