"""The import rules of docs/architecture.md: the contract (models/core/), the entry points and the
whole serving side never import torch; no module imports another that imports it back; every import
of every module (inside functions too) is one its row of the "may import" table allows (the table
is read from the document, so the two cannot drift)."""
import ast
import re
import subprocess
import sys
from dataclasses import dataclass
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


# --- docs/architecture.md's "may import" table, checked import by import -------------------------

ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
TICKED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Layer:
    names: tuple[str, ...]  # import names of the row
    folders: tuple[str, ...]  # one per name: a folder (the modules under it) or a file (that module)
    allowed: frozenset[str]  # what the "may import" cell names in backticks: rows and top-level packages
    private: bool  # the cell allows private APIs (a dotted part starting with "_")
    shared: bool  # the role says every layer may import it

    def specificity(self, path: Path) -> int:
        """How closely this row holds the module file ``path`` (0: not at all; a named file beats any folder)."""
        best = 0
        for folder in self.folders:
            target = REPO_ROOT / folder
            if folder.endswith(".py"):
                best = max(best, 10_000 if path == target else 0)
            elif path.is_relative_to(target):
                best = max(best, len(target.parts))
        return best


def read_layers() -> list[Layer]:
    text = ARCHITECTURE.read_text()
    header = text.index("| import name | folder | role | may import |")
    rows = []
    for line in text[header:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, line
        names, folders = tuple(TICKED.findall(cells[0])), tuple(TICKED.findall(cells[1]))
        assert names and len(names) == len(folders), line
        rows.append(Layer(names, folders, frozenset(TICKED.findall(cells[3])), "private API" in cells[3],
                          "shared by every layer" in cells[2]))
    return rows


LAYERS = read_layers()


def module_file(module: str) -> Path:
    prefix = next(p for p in sorted(PACKAGE_DIRS, key=len, reverse=True) if module == p or module.startswith(p + "."))
    path = PACKAGE_DIRS[prefix].joinpath(*(module[len(prefix):].lstrip(".").split(".") if module != prefix else []))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def layer_of(module: str) -> Layer:
    path = module_file(module)
    score, index = max((layer.specificity(path), i) for i, layer in enumerate(LAYERS))
    assert score > 0, f"{module} ({path.relative_to(REPO_ROOT)}): no row of docs/architecture.md holds it"
    return LAYERS[index]


def imports_of(module: str, source: str | None = None) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) of every import statement, at any depth."""
    found = []
    for node in ast.walk(ast.parse(module_file(module).read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or ""), [alias.name for alias in node.names]))
    return found


def is_private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def violations(module: str, source: str | None = None) -> list[str]:
    """What ``module`` (or ``source`` in its place) imports that its row does not allow, one line each."""
    own, problems = layer_of(module), []
    for line, imported, names in imports_of(module, source):
        where, row = f"{module_file(module).relative_to(REPO_ROOT)}:{line} imports {imported}", own.names[0]
        if imported.startswith("."):
            problems.append(f"{where}: a relative import (use the imgcls.* name)")
        elif imported.split(".")[0] == "imgcls":
            for target in [f"{imported}.{n}" for n in names if f"{imported}.{n}" in ALL_MODULES] or [imported]:
                layer = layer_of(target)
                if layer is not own and not layer.shared and not set(layer.names) & own.allowed:
                    problems.append(f"{where}: the {row} row may not import the {layer.names[0]} row ({target})")
        elif is_private(imported) or any(is_private(n) for n in names):
            if not own.private:
                problems.append(f"{where}: a private API; only the host's row may use one")
        elif imported.split(".")[0] not in sys.stdlib_module_names and imported.split(".")[0] not in own.allowed:
            problems.append(f"{where}: the {row} row may not import {imported.split('.')[0]}")
    return problems


def test_the_table_names_real_folders_and_rows():
    """Every folder of the table exists under its import name; every imgcls name a cell lists is a row
    (a typo would silently allow nothing), every other one a top-level package name."""
    rows = {name for layer in LAYERS for name in layer.names}
    for layer in LAYERS:
        for name, folder in zip(layer.names, layer.folders):
            assert (REPO_ROOT / folder).exists(), folder
            assert module_file(name) in (REPO_ROOT / folder, REPO_ROOT / folder / "__init__.py"), (name, folder)
        for allowed in layer.allowed - rows:
            assert allowed.isidentifier() and allowed != "imgcls", (layer.names[0], allowed)
    assert {"imgcls.models.core", "imgcls.service.engine", "imgcls.service.host"} <= rows


def test_every_import_follows_the_table():
    assert len(ALL_MODULES) > 100
    problems = [problem for module in ALL_MODULES for problem in violations(module)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_an_arrow_back_up_and_a_private_api():
    """The rules themselves: models never imports export or service; below the host, no BentoML
    and no private API; the host may; the dispatcher may import any stage."""
    core, host, engine = (next(l for l in LAYERS if name in l.names) for name in
                          ("imgcls.models.core", "imgcls.service.host", "imgcls.service.engine"))
    zoo = next(l for l in LAYERS if "imgcls.models.zoo" in l.names)
    for forbidden in ("imgcls.export", "imgcls.service", "imgcls.service.host"):
        assert forbidden not in zoo.allowed | core.allowed
    assert "bentoml" not in engine.allowed | core.allowed and "bentoml" in host.allowed
    assert host.private and not engine.private and not core.private
    assert layer_of("imgcls.model_bench") is layer_of("imgcls.cli") and "imgcls.export" in layer_of("imgcls.cli").allowed
    assert layer_of("imgcls.service.model_sources").names == ("imgcls.service.model_sources",)


LAZY_ARROWS = (
    "import json\n"
    "def timing():\n"
    "    from imgcls.export.config import INPUT_NAME\n"
    "    from imgcls.service import runtime\n"
    "    import bentoml\n"
    "    from bentoml._internal import context\n"
)


@pytest.mark.parametrize("module, expected", [
    ("imgcls.models.zoo.registry", ["imgcls.export", "imgcls.service", "bentoml", "private API"]),
    ("imgcls.service.engine.batcher", ["imgcls.export", "bentoml", "private API"]),
    ("imgcls.service.host.service", ["imgcls.export"]),
    ("imgcls.model_bench", ["bentoml", "private API"]),
])
def test_the_checker_finds_lazy_imports_the_row_forbids(module, expected):
    """What the benchmark code did from models/zoo (export and service imported inside functions),
    and BentoML and a private API below the host, are caught; the same lines are fine where allowed."""
    found = violations(module, LAZY_ARROWS)
    assert len(found) == len(expected), found
    for problem, what in zip(found, expected):
        assert what in problem, (problem, what)
