"""One import namespace without search-path tricks: in a checkout (an editable install), ``imgcls``
is the ``imgcls/`` folder and ``imgcls.models|export|service`` come from setuptools' package-dir
mapping, so tools that walk the package (documentation, plugins, packaging) see only imgcls's own
modules and finish."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

WALK = (
    "import json, pkgutil, imgcls\n"
    "names = [m.name for m in pkgutil.walk_packages(imgcls.__path__, 'imgcls.')]\n"
    "print(json.dumps({'path': list(imgcls.__path__), 'names': names}))\n"
)


def run_python(code: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_walk_packages_ends_and_lists_only_imgcls_modules():
    result = run_python(WALK)
    assert result.returncode == 0, result.stderr[-2000:]  # a RecursionError with the old path trick
    found = json.loads(result.stdout)
    assert found["path"] == [str(REPO_ROOT / "imgcls")]
    own = {f"imgcls.{p.stem}" for p in (REPO_ROOT / "imgcls").glob("*.py") if p.stem != "__init__"}
    assert set(found["names"]) == own, sorted(set(found["names"]) ^ own)
    assert "imgcls.cli" in found["names"]


def test_the_checkout_root_is_not_part_of_the_package():
    for name in ("imgcls.tests", "imgcls.benchmarks", "imgcls.imgcls", "imgcls.docs"):
        result = run_python(f"import {name}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name


def test_every_stage_package_imports_from_its_folder(tmp_path):
    """Each package folder under models/, export/ and service/ (new ones included) imports as
    imgcls.<folder path>, from anywhere, from the folder the checkout holds."""
    folders = sorted(p.parent for top in ("models", "export", "service") for p in (REPO_ROOT / top).rglob("__init__.py")
                     if "__pycache__" not in p.parts)
    names = {"imgcls." + ".".join(f.relative_to(REPO_ROOT).parts): str(f / "__init__.py") for f in folders}
    assert {"imgcls.models.core", "imgcls.service.scoring", "imgcls.export"} <= set(names)
    code = ("import importlib, json, sys\n"
            f"names = {sorted(names)!r}\n"
            "print(json.dumps({n: importlib.util.find_spec(n).origin for n in names}))\n")
    result = run_python("import importlib.util\n" + code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == names
