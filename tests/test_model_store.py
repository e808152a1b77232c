"""BentoML's model store as a model source: ``imgcls export RUN --bentoml NAME`` stores the bundle
with its labels (the real CLI, BENTOML_HOME in a temporary folder), ``bentoml models list/get`` shows
it, and ``imgcls.service.model_sources.resolve`` turns ``bentoml:NAME[:VERSION]`` into the stored
bundle folder, refusing missing models, bad names and folders that are not bundles."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.factories import make_tiny_run

BENTOML = str(Path(sys.executable).with_name("bentoml"))


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1"}


def run(command: list[str], home: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=environment(home), capture_output=True, text=True,
                          timeout=600, **kw)


RESOLVE = (
    "import json, sys\n"
    "from imgcls.service.model_sources import ModelSourceError, resolve\n"
    "out = {}\n"
    "for source in sys.argv[1:]:\n"
    "    try:\n"
    "        out[source] = {'path': str(resolve(source))}\n"
    "    except ModelSourceError as exc:\n"
    "        out[source] = {'error': str(exc)}\n"
    "print(json.dumps(out))\n"
)


def resolve_all(home: Path, *sources: str) -> dict[str, dict[str, str]]:
    result = run([sys.executable, "-c", RESOLVE, *sources], home)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A tiny run exported by the real CLI with --bentoml into a private model store."""
    root = tmp_path_factory.mktemp("store")
    run_dir, home, out = make_tiny_run(root), root / "bentoml-home", root / "bundles" / "tiny"
    result = run([sys.executable, "-m", "imgcls", "export", str(run_dir), "--out", str(out), "--bentoml", "Tiny-Model",
                  "--no-progress"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    return home, out, result.stdout


def test_export_stores_the_bundle_with_labels(stored):
    home, out, stdout = stored
    assert "stored in BentoML's model store as tiny-model:" in stdout
    listed = run([BENTOML, "models", "list", "-o", "json"], home)
    assert listed.returncode == 0, listed.stderr
    tags = [m["tag"] for m in json.loads(listed.stdout)]
    assert len(tags) == 1 and tags[0].startswith("tiny-model:")
    shown = run([BENTOML, "models", "get", "tiny-model:latest", "-o", "json"], home)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["labels"] == {"arch": "tiny", "classes": "3", "precision": "fp32", "accuracy": "unknown",
                              "source": "imgcls"}
    card = json.loads((out / "card.json").read_text())
    assert info["metadata"]["class_names"] == card["class_names"] == ["cat", "dog", "owl"]
    assert info["metadata"]["lineage"]["sha256:model.onnx"] == card["lineage"]["sha256:model.onnx"]


def test_resolve_finds_the_stored_bundle(stored, tmp_path):
    home, out, _ = stored
    tag = json.loads(run([BENTOML, "models", "list", "-o", "json"], home).stdout)[0]["tag"]
    found = resolve_all(home, "bentoml:tiny-model", f"bentoml:{tag}", str(out))
    path = Path(found["bentoml:tiny-model"]["path"])
    assert path == Path(found[f"bentoml:{tag}"]["path"]) and path.is_relative_to(home)
    assert (path / "card.json").read_bytes() == (out / "card.json").read_bytes()
    assert (path / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert not list(path.glob(".imgcls*"))  # the folder marker describes the bundle folder, not the model
    assert found[str(out)]["path"] == str(out)


def test_resolve_refuses_what_is_not_a_stored_bundle(stored, tmp_path):
    home, out, _ = stored
    (tmp_path / "photos").mkdir()
    (tmp_path / "run-card").mkdir()
    (tmp_path / "run-card" / "card.json").write_bytes((out / "card.json").read_bytes())  # a card, no ONNX file
    sources = ["bentoml:no-such-model", "bentoml:../../etc", "bentoml:tiny-model:nosuchversion", "bentoml:",
               str(tmp_path / "missing"), str(tmp_path / "photos"), str(tmp_path / "run-card")]
    found = resolve_all(home, *sources)
    for source in sources:
        assert "error" in found[source], (source, found[source])
        assert found[source]["error"].startswith(f"model source {source}"), found[source]
    assert "models there: tiny-model" in found["bentoml:no-such-model"]["error"]


def test_a_bad_model_name_is_refused_before_exporting(tmp_path):
    run_dir, out = make_tiny_run(tmp_path), tmp_path / "bundles" / "tiny"
    result = run([sys.executable, "-m", "imgcls", "export", str(run_dir), "--out", str(out), "--bentoml", "../evil",
                  "--no-progress"], tmp_path / "home")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("imgcls export: --bentoml ../evil: not a BentoML model name")
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
