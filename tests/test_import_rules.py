"""DESIGN.md's import rules: the contract layer and the serving side never import torch."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

TORCH_FREE = ["models.preprocess", "models.card", "models.dataset", "models.atomic", "models.cli"]
TORCH_FREE += sorted(
    f"service.{p.stem}" for p in (REPO_ROOT / "service").glob("*.py") if p.stem not in ("__init__",)
)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"importlib.import_module({module!r})\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_service_module_is_checked():
    assert all(Path(REPO_ROOT / "service" / f"{m.split('.')[1]}.py").exists() for m in TORCH_FREE if m.startswith("service."))
