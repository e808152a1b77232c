"""One distribution, one import namespace: a wheel built from the repository holds only imgcls/
(and its dist-info), installs beside other code without claiming `models`, `export` or `service`,
and its console script and ``python -m imgcls`` work from anywhere."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("imgcls-*.whl")
    return found


def test_wheel_holds_only_the_imgcls_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"imgcls", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    sources = {"imgcls/" + str(p.relative_to(REPO_ROOT)) for top in ("models", "export", "service")
               for p in (REPO_ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    sources |= {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "imgcls").glob("*.py")}
    assert {"imgcls/cli.py", "imgcls/models/core/card.py", "imgcls/service/predictor.py"} <= sources
    modules = {n for n in names if n.endswith(".py")}
    assert modules == sources, f"missing: {sorted(sources - modules)}; not in the sources (a stale build?): " \
                               f"{sorted(modules - sources)}"
    statics = {"imgcls/" + str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "service").rglob("static/*")}
    assert statics and statics <= set(names), sorted(statics - set(names))


def test_installed_wheel_claims_no_common_top_level_name(wheel, tmp_path):
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=clean)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=clean)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("models", "export", "service"):
        result = subprocess.run([str(python), "-c", f"import {name}"], cwd=elsewhere, capture_output=True, text=True,
                                env=clean)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name
    for command in ([str(venv / "bin" / "imgcls"), "--help"], [str(python), "-m", "imgcls", "--help"]):
        result = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=60, env=clean)
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout and "train" in result.stdout
    located = subprocess.run([str(python), "-c", "import imgcls.service.scoring, imgcls.models.core; "
                              "print(imgcls.models.core.__file__); print(len(imgcls.__path__))"],
                             cwd=elsewhere, capture_output=True, text=True, check=True, env=clean).stdout.split()
    assert located[0].startswith(str(venv)) and located[1] == "1"
    walked = subprocess.run([str(python), "-c", "import pkgutil, imgcls\n"
                             "print('\\n'.join(m.name for m in pkgutil.walk_packages(imgcls.__path__, 'imgcls.', "
                             "onerror=lambda name: None)))"],
                            cwd=elsewhere, capture_output=True, text=True, timeout=120, env=clean)
    assert walked.returncode == 0, walked.stderr[-2000:]
    names = set(walked.stdout.split())
    assert {"imgcls.cli", "imgcls.models.core.card", "imgcls.service.predictor", "imgcls.export"} <= names
    assert all(n.startswith("imgcls.") for n in names) and not {n for n in names if ".tests" in n or ".imgcls" in n}
