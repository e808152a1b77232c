"""The CPU serving image: build it (legacy builder, wheelhouse, local base image), run it with a
bundle, wait for /readyz, classify, stop it. Starts a Docker daemon when none runs, and stops the
one it started by its PID."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

import imgcls

from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_tiny_bundle
from tests.system_tools import unavailable
from imgcls.service.host.launcher import free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker]
BASE_SCRIPT = REPO_ROOT / "docker" / "base-image.sh"  # builds the base image from Debian packages
BASE_IMAGE = os.environ.get("IMGCLS_BASE_IMAGE", "local/python:3.11-bookworm")
TAG = "imgcls:test-cpu"


def run(*command: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def docker_daemon():
    ready = shutil.which("docker") is not None and run("docker", "info", check=False, timeout=30).returncode == 0 \
        and run("docker", "image", "inspect", BASE_IMAGE, check=False, timeout=30).returncode == 0
    if not ready and os.geteuid() != 0:
        unavailable("needs a running Docker daemon with the base image, which docker/base-image.sh makes as root "
                    "(Debian packages docker.io and debootstrap)")
    started_pid = None
    if not ready:
        out = run("bash", str(BASE_SCRIPT), BASE_IMAGE, timeout=900).stdout
        found = re.search(r"DOCKERD_PID=(\d+)", out)
        started_pid = int(found.group(1)) if found else None
    yield
    if started_pid is not None:
        os.kill(started_pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(started_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def image(docker_daemon):
    run("bash", "docker/wheelhouse.sh", "cpu", timeout=600)
    run("docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", TAG, ".", timeout=900)
    return TAG


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = make_tiny_bundle(tmp_path_factory.mktemp("container-bundle"))
    for item in [path, *path.iterdir()]:  # the container user (uid 10001) must be able to read it
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def wait_ready(url: str, name: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    logs = run("docker", "logs", name, check=False).stdout
    raise AssertionError(f"container not ready in {timeout} s:\n{logs[-3000:]}")


def test_cpu_image_serves_a_mounted_bundle(image, bundle):
    name, port = f"imgcls-test-{os.getpid()}", free_port()
    run("docker", "run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:3000",
        "-v", f"{bundle}:/bundle:ro", image, "--workers", "1")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, name)
        png = encode(make_image(64, 48))
        response = httpx.post(url + "/classify", files=[("images", ("a.png", png, "image/png"))], timeout=30)
        assert response.status_code == 200, response.text
        predictions = response.json()["results"][0]["predictions"]
        assert [p["label"] for p in predictions] and set(p["label"] for p in predictions) <= {"cat", "dog", "owl"}
        card = json.loads((bundle / "card.json").read_text())
        assert response.headers["x-model-version"] == "bundle@" + card["lineage"]["sha256:model.onnx"][:12]
        assert run("docker", "exec", name, "id", "-u").stdout.strip() != "0"
        assert run("docker", "exec", name, "python", "-c", "import torch", check=False).returncode != 0
        # imgcls is the installed wheel (no source tree copied in); its torch stages say what they lack
        where = run("docker", "exec", name, "python", "-c", "import imgcls.models.core.card as c, importlib.metadata as m; "
                    "print(c.__file__); print(m.version('imgcls'))").stdout.split()
        assert where[0].startswith("/opt/venv/lib/") and "/site-packages/imgcls/models/core/" in where[0], where
        assert where[1] == imgcls.__version__
        assert run("docker", "exec", name, "test", "-e", "/app", check=False).returncode != 0
        train = run("docker", "exec", name, "imgcls", "train", "--help", check=False)
        assert train.returncode == 2 and "install the 'train' extra" in train.stderr, train.stderr
        stopped = time.monotonic()
        run("docker", "stop", "--time", "20", name, timeout=60)
        assert time.monotonic() - stopped < 20  # SIGTERM handled, not the 20 s kill
        assert run("docker", "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        run("docker", "rm", "-f", name, check=False)


def test_cpu_image_runs_as_the_kserve_manifest_says(image, bundle):
    """deploy/kserve/inferenceservice.yaml: its IMGCLS_* variables, the bundle at its IMGCLS_BUNDLE, its port
    and probe paths; a tritonclient infer on the v2 route KServe forwards to."""
    import numpy as np
    import tritonclient.http as triton
    import yaml

    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    container = manifest["spec"]["predictor"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    port, name, host_port = container["ports"][0]["containerPort"], f"imgcls-kserve-{os.getpid()}", free_port()
    env_args = [arg for key, value in env.items() if key.startswith("IMGCLS_") for arg in ("-e", f"{key}={value}")]
    run("docker", "run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{host_port}:{port}",
        "-v", f"{bundle}:{env['IMGCLS_BUNDLE']}:ro", *env_args, image)
    try:
        url = f"http://127.0.0.1:{host_port}"
        wait_ready(url, name)
        for probe in ("readinessProbe", "livenessProbe"):
            assert httpx.get(url + container[probe]["httpGet"]["path"], timeout=5).status_code == 200, probe
        client = triton.InferenceServerClient(f"127.0.0.1:{host_port}")
        model = env["IMGCLS_MODEL_NAME"]
        assert client.is_server_ready() and client.is_model_ready(model)
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([encode(make_image(64, 48))], dtype=object))
        probabilities = client.infer(model, [tensor]).as_numpy("probabilities")
        assert probabilities.shape == (1, 3) and abs(float(probabilities.sum()) - 1.0) < 1e-4
    finally:
        run("docker", "rm", "-f", name, check=False)


def test_docker_stop_under_load_answers_every_accepted_request(image, bundle):
    """``docker stop`` while 16 clients send requests: every request sent before the stop is answered
    (none lost, no 5xx), the container exits 0 within ``docker stop``'s 10 s."""
    from benchmarks.reliability import Fleet, payload, tally

    name, port = f"imgcls-stop-{os.getpid()}", free_port()
    run("docker", "run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:3000",
        "-v", f"{bundle}:/bundle:ro", image, "--workers", "2")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, name)
        body, content_type = payload()
        with Fleet(url, body, content_type, clients=16) as fleet:
            time.sleep(2.0)
            signalled = time.monotonic()
            run("docker", "stop", "--time", "10", name, timeout=60)
            stop_s = time.monotonic() - signalled
            time.sleep(0.3)
        before = tally([a for a in fleet.attempts if a.started < signalled])
        assert run("docker", "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        assert stop_s < 10, stop_s  # drained, not killed by docker after its 10 s
        assert before["sent"] > 16 and before["lost"] == 0 and before["answered_5xx"] == 0, before
        assert before["answered"] == before["sent"], before
    finally:
        run("docker", "rm", "-f", name, check=False)
