"""The edge file (``edge/model.int8.ort``) gives x86's answers on ONNX Runtime's ARM64 integer kernels.

ORT's aarch64 build from PyPI in an arm64 Python from Debian's packages, under ``qemu-aarch64``
(``benchmarks/arm64_rootfs.sh``), on two CPU models: with the dot-product instructions
(neoverse-n1) and without (cortex-a72). Twelve real images of a tiny INT8 bundle; the benchmark's
command on that bundle's gate images, with its goal row.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.int8_arm64 import ARM_CPUS, EDGE_FILE, Unavailable, agreement, rootfs, run_logits
from tests.conftest import REPO_ROOT
from tests.factories import make_tiny_bundle
from tests.system_tools import require, unavailable

pytestmark = pytest.mark.slow
# Measured (AMD EPYC with AVX-512 VNNI, onnxruntime 1.31.1): the tiny bundle's edge file gives bit-identical
# logits on x86 and on both emulated ARM64 CPUs (12 images, logits up to ~10). On the demo's
# efficientnet_lite0 (U8S8, 359 validation images) ARM64 and x86 agree on every answer, mean |logit
# difference| 0.00014, max 0.186 on logits up to 7.68 (2.4 %): the integer kernels may requantize one
# value a step apart, which a deep graph carries to the logits. MobileNet-v2 on the digits (U8S8, 359 images):
# every answer agrees, max 0.042 on logits up to 6.15; its epoch-4 model differed on one near-tie (0.038 of
# 5.2). The bound: 3 % of the largest logit.
RELATIVE_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def arm64_root():
    require("qemu-aarch64")
    try:
        return rootfs()
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """(run folder, bundle folder) of a tiny INT8 bundle whose gate passed."""
    folder = tmp_path_factory.mktemp("arm64")
    bundle = make_tiny_bundle(folder, int8=True, classes=("cat", "dog", "owl"), per_class=8)
    return folder / "runs" / "tiny", bundle


def test_the_edge_file_answers_the_same_on_arm64_kernels(arm64_root, tiny_int8):
    from imgcls.export.images import load_pixels, load_split
    from imgcls.models.core.card import ModelCard

    run, bundle = tiny_int8

    edge = bundle / EDGE_FILE
    assert edge.is_file(), "an INT8 bundle whose gate passed has its edge file"
    split = load_split(run, None)
    images = load_pixels(split, (split.val + split.train)[:12], ModelCard.load(bundle).preprocess)
    assert images.pixels.shape[0] == 12

    x86, = run_logits([edge], images.pixels)
    for cpu in ARM_CPUS:
        arm, = run_logits([edge], images.pixels, cpu, arm64_root)
        figures = agreement(arm, x86, images.labels)
        assert arm.shape == x86.shape == (12, 3)
        assert figures["top1_agreement"] == 1.0, (cpu, figures)
        assert figures["max_abs_logit_diff"] <= RELATIVE_TOLERANCE * figures["logit_scale"], (cpu, figures)
        assert figures["top1"] == figures["top1_x86_ort"]
    assert np.abs(x86).max() > 0.1, "the logits say something (a dead model would agree trivially)"


def test_the_benchmark_reports_arm64_top1_against_the_gate(arm64_root, tiny_int8, tmp_path):
    """``benchmarks.int8_arm64 RUN BUNDLE`` on the gate's own images: the ARM64 row's top-1, its points
    against the gate's x86 figure and a goal row for RESULTS.md; models of an earlier result are kept."""
    from imgcls.models.core.card import ModelCard

    run, bundle = tiny_int8
    out = tmp_path / "int8_arm64.json"
    out.write_text(json.dumps({"models": [{"model": "earlier", "arch": "x", "gate_int8_top1_x86": 0.5, "rows": []}]}))
    done = subprocess.run([sys.executable, "-m", "benchmarks.int8_arm64", str(run), str(bundle), "--cpu", "cortex-a72",
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    earlier, model = result["models"]
    assert earlier["model"] == "earlier" and model["model"] == "tiny"
    gate = ModelCard.load(bundle).export["int8"]["gate"]
    assert model["same_images_as_gate"] is True and model["gate_int8_top1_x86"] == gate["int8_top1"]
    x86, arm = model["rows"]
    assert arm["cpu"] == "cortex-a72" and arm["images"] == x86["images"] == gate["images"]
    assert x86["top1"] == gate["int8_top1"], "model.int8.onnx on x86 gives the gate's figure on the gate's images"
    assert arm["top1_agreement"] == 1.0 and arm["top1"] == arm["top1_x86_ort"]
    assert arm["points_vs_gate_x86"] == pytest.approx(100 * (arm["top1"] - gate["int8_top1"]))
    row, = result["summary"]
    assert row["item"] == "28 ARM64 kernels" and row["goal"] == "within 0.5 points of the gate's figure"
    assert row["value"] == pytest.approx(100 * arm["top1"]) and row["met"] is (abs(arm["points_vs_gate_x86"]) <= 0.5)


def test_the_benchmark_without_a_root_filesystem_says_why_in_one_line(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for program in ("bash", "mkdir", "mktemp", "rm"):
        (tools / program).symlink_to(shutil.which(program))
    env = {"PATH": str(tools), "IMGCLS_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.int8_arm64", "runs/x", "bundles/x"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot run ARM64 kernels here" in done.stderr and "no apt-get on this machine" in done.stderr


def test_a_machine_that_cannot_build_the_root_filesystem_says_why(tmp_path, monkeypatch):
    """No apt-get (not Debian): Unavailable with the reason, which the fixture above turns into a skip."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for program in ("bash", "mkdir", "mktemp", "rm"):
        (tools / program).symlink_to(shutil.which(program))
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(Unavailable, match="no apt-get on this machine"):
        rootfs()


def test_an_onnxruntime_without_an_aarch64_wheel_says_which(tmp_path, monkeypatch):
    """No such wheel on PyPI (or PyPI unreachable): Unavailable naming the wheels, before any Debian download."""
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(Unavailable, match=r"pip download of the aarch64 wheels failed: .*onnxruntime==0\.0\.0"):
        rootfs("0.0.0")
    assert not any((tmp_path / "cache" / "arm64-rootfs").iterdir()), "a failed build leaves nothing behind"
