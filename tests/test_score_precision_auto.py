"""``imgcls score --precision auto`` makes serving's choice (``imgcls.service.precision.choose``).

Real tiny INT8 bundle, real ``imgcls score`` in a subprocess and on a real local Ray. The card's speed
figure for this CPU's kind is written into copies, so both outcomes are taken on any machine; the
demo scores with ``auto`` and so follows the same choice.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.models.core.cpu import local_cpu
from tests.conftest import REPO_ROOT
from tests.factories import make_tiny_bundle
from tests.train_helpers import cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("int8"), int8=True, classes=("cat", "dog"), per_class=6)
    assert (bundle / "model.int8.onnx").is_file()
    return bundle


def with_ratio(source: Path, dest: Path, ratio: float) -> Path:
    """A copy whose card says its U8U8 INT8 file ran ``ratio``× fp32 on a CPU of this machine's kind."""
    shutil.copytree(source, dest)
    card = json.loads((dest / "card.json").read_text())
    int8 = card["export"]["int8"]
    int8["int8_format"] = "U8U8"
    int8["speed"] = {"ratio_vs_fp32": ratio, "format": "U8U8",
                     "cpu": {"isa": "test", "target": local_cpu().kind, "model": "test CPU", "machine": "test"}}
    (dest / "card.json").write_text(json.dumps(card, indent=1))
    return dest


def score(bundle: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", "score", str(bundle), str(images), "--out", str(out),
                           "--precision", "auto", "--no-progress", *extra], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=240)


def precisions(out: Path) -> set[str]:
    with out.open(newline="") as handle:
        return {row["precision"] for row in csv.DictReader(handle)}


@pytest.mark.parametrize(("ratio", "expected"), [(1.5, "int8"), (0.13, "fp32")])
def test_score_auto_scores_with_the_variant_serving_picks_here(int8_bundle, tmp_path, ratio, expected):
    bundle = with_ratio(int8_bundle, tmp_path / "bundle", ratio)
    result = score(bundle, int8_bundle.parents[1] / "data", tmp_path / "scores.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert precisions(tmp_path / "scores.csv") == {expected}
    assert f"serving {expected}: INT8 runs {ratio:.2f}× fp32" in result.stderr, result.stderr[-2000:]


def test_score_auto_on_ray_chooses_once_in_the_driver(int8_bundle, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    bundle = with_ratio(int8_bundle, tmp_path / "bundle", 1.5)
    out = tmp_path / "scores.csv"
    result = score(bundle, int8_bundle.parents[1] / "data", out, "--engine", "ray", "--actors", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert precisions(out) == {"int8"}
    assert "serving int8: INT8 runs 1.50× fp32" in result.stderr, result.stderr[-2000:]
