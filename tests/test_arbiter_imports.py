"""BentoML's arbiter (the ``bentoml serve`` process that starts the workers) imports the service module
only to read its configuration: it must not pay for NumPy, ONNX Runtime or Pillow, which only the
workers use. Every import there is on the path from ``imgcls serve`` to the first answer."""
from __future__ import annotations

import json
import subprocess
import sys

from imgcls.service.host.launcher import child_environment
from tests.conftest import REPO_ROOT

HEAVY = ("numpy", "onnxruntime", "PIL")


def test_the_arbiter_loads_the_service_without_numpy_onnxruntime_or_pillow(tmp_path):
    # as `bentoml serve` loads it: BentoML's service loader, with the environment imgcls serve passes
    code = (
        "import json, sys\n"
        "from _bentoml_impl.loader import load\n"
        "service = load('imgcls.service.host.service:ImageClassifier', sys.argv[1])\n"
        f"print(json.dumps({{'name': service.name, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = child_environment({"IMGCLS_BUNDLE": str(tmp_path), "IMGCLS_WORKERS": "2", "BENTOML_HOME": str(tmp_path)})
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["name"] == "imgcls"
    assert answer["heavy"] == [], f"the arbiter imported {answer['heavy']}"


def test_imgcls_serve_checks_its_sources_without_numpy_onnxruntime_or_pillow(tmp_path):
    # everything `imgcls serve` does before the server starts: the models are loaded by the arbiter,
    # in a child process, while BentoML's CLI loads (imgcls.service.host.arbiter)
    from tests.factories import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    code = (
        "import json, sys\n"
        "from imgcls.service.host.config import ServiceConfig\n"
        "from imgcls.service.host.serve import build_parser, check_sources\n"
        "build_parser()\n"
        "problem, found = check_sources(ServiceConfig(bundle=sys.argv[1]))\n"
        f"print(json.dumps({{'problem': problem, 'found': [m.name for m in found], "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bundle)], cwd=REPO_ROOT, env=child_environment({}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["problem"] is None and answer["found"] == [bundle.name]
    assert answer["heavy"] == [], f"imgcls serve imported {answer['heavy']} before starting the server"
