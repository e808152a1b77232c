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
    for module in ("imgcls/cli.py", "imgcls/models/core/card.py", "imgcls/models/zoo/registry.py",
                   "imgcls/models/training/cli.py", "imgcls/export/bundle.py", "imgcls/service/predictor.py",
                   "imgcls/service/host/service.py", "imgcls/service/scoring/cli.py"):
        assert module in names, module
    packages = {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    on_disk = {"imgcls/" + str(p.parent.relative_to(REPO_ROOT)) for top in ("models", "export", "service")
               for p in (REPO_ROOT / top).rglob("__init__.py")}
    assert on_disk <= packages, f"packages missing from the wheel: {sorted(on_disk - packages)}"


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
    located = subprocess.run([str(python), "-c", "import imgcls.service.host, imgcls.models.core; "
                              "print(imgcls.models.core.__file__); print(len(imgcls.__path__))"],
                             cwd=elsewhere, capture_output=True, text=True, check=True, env=clean).stdout.split()
    assert located[0].startswith(str(venv)) and located[1] == "1"  # no source-tree path added
