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
