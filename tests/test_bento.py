"""bentofile.yaml end to end: a tiny bundle stored in BentoML's model store by ``imgcls export
--bentoml imgcls-model``, ``bentoml build`` packs the imgcls wheel and that model into a bento (the
build locks the requirements, so it needs the package index, as `make test` does to install), and
``bentoml serve`` of the bento answers /classify with the stored model, run from a folder outside the
checkout with no bundle path given."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import imgcls

from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_tiny_run
from imgcls.service.host.launcher import free_port

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def environment(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1", **extra}


def run(command: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment(home), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} -> {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    root = tmp_path_factory.mktemp("bento")
    home = root / "bentoml-home"
    run([sys.executable, "-m", "imgcls", "export", str(make_tiny_run(root)), "--out", str(root / "bundle"),
         "--bentoml", "imgcls-model", "--no-progress"], home)
    model = json.loads(run([BENTOML, "models", "get", "imgcls-model:latest", "-o", "json"], home).stdout)
    run(["bash", "docker/wheelhouse.sh", "imgcls"], home)
    run([BENTOML, "build"], home)
    built = json.loads(run([BENTOML, "list", "-o", "json"], home).stdout)
    assert len(built) == 1 and built[0]["tag"].startswith("imgcls:")
    return home, built[0]["tag"], model


def test_the_bento_holds_the_wheel_and_the_stored_model(bento):
    home, tag, model = bento
    name, version = tag.split(":")
    folder = home / "bentos" / name / version
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [f"{model['name']}:{model['version']}"]
    wheels = sorted(p.name for p in (folder / "env" / "python" / "wheels").iterdir())
    assert wheels == [f"imgcls-{imgcls.__version__}-py3-none-any.whl"]  # the name bentofile.yaml gives
    assert not list((folder / "src").rglob("*.py"))  # the code is the wheel, not copied folders


def test_bentoml_serve_of_the_bento_answers_with_the_stored_model(bento, tmp_path):
    home, tag, model = bento
    port = free_port()
    process = subprocess.Popen([BENTOML, "serve", tag, "--port", str(port), "--host", "127.0.0.1"], cwd=tmp_path,
                               env=environment(home, IMGCLS_BUNDLE="bentoml:imgcls-model"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(0.3)
        png = encode(make_image(64, 48))
        response = httpx.post(url + "/classify", files=[("images", ("a.png", png, "image/png"))], timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-model-name"] == "imgcls-model"
        assert response.headers["x-model-version"].startswith(model["version"] + "@")
        labels = [p["label"] for p in response.json()["results"][0]["predictions"]]
        assert sorted(labels) == ["cat", "dog", "owl"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
