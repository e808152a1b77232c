"""The import rules of docs/architecture.md: the contract (models/core/), the entry points and the
whole serving side never import torch; no module imports another that imports it back."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE_DIRS = {"imgcls": REPO_ROOT / "imgcls", "imgcls.models": REPO_ROOT / "models",
                "imgcls.export": REPO_ROOT / "export", "imgcls.service": REPO_ROOT / "service"}


def modules_under(package: str, folder: Path) -> list[str]:
    names = []
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] == "__main__":
            continue
        names.append(".".join([package, *parts]))
    return names


TORCH_FREE = (modules_under("imgcls.models.core", REPO_ROOT / "models" / "core")
              + modules_under("imgcls.service", REPO_ROOT / "service") + ["imgcls", "imgcls.cli", "imgcls.demo"])
ALL_MODULES = [m for package, folder in PACKAGE_DIRS.items() for m in modules_under(package, folder)
               if package != "imgcls" or folder == REPO_ROOT / "imgcls"]


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


def test_the_serving_side_is_covered():
    """The parametrisation above really reaches every serving module, including nested ones."""
    assert "imgcls.service.host.service" in TORCH_FREE and "imgcls.service.scoring.cli" in TORCH_FREE
    assert "imgcls.models.core.bundle" in TORCH_FREE and "imgcls.service.predictor" in TORCH_FREE
    assert not [m for m in TORCH_FREE if ".training" in m or ".zoo" in m or ".export" in m]


def module_imports(module: str) -> set[str]:
    """The imgcls modules a module imports at any depth of its code (lazy imports included)."""
    folder = next(f for p, f in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0]))
                  if module == p or module.startswith(p + "."))
    prefix = next(p for p in sorted(PACKAGE_DIRS, key=len, reverse=True) if module == p or module.startswith(p + "."))
    relative = module[len(prefix):].lstrip(".").split(".") if module != prefix else []
    path = folder.joinpath(*relative)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcls"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in ALL_MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("imgcls"))
    return {m for m in found if m in ALL_MODULES and m != module}


def test_no_import_cycles():
    graph = {m: module_imports(m) for m in ALL_MODULES}
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for child in graph.get(node, ()):
            visit(child, stack + [node], done)
        done.add(node)

    done: set[str] = set()
    for module in graph:
        visit(module, [], done)
    assert not cycles, cycles
