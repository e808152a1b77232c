"""The edge file (``edge/model.int8.ort``) gives x86's answers on ONNX Runtime's ARM64 integer kernels.

ORT's aarch64 build from PyPI in an arm64 Python from Debian's packages, under ``qemu-aarch64``
(``benchmarks/arm64_rootfs.sh``), on two CPU models: with the dot-product instructions
(neoverse-n1) and without (cortex-a72). Twelve real images of a tiny INT8 bundle.
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.int8_arm64 import ARM_CPUS, EDGE_FILE, Unavailable, agreement, rootfs, run_logits
from tests.factories import make_tiny_bundle
from tests.system_tools import require, unavailable

pytestmark = pytest.mark.slow
# Measured (AMD EPYC with AVX-512 VNNI, onnxruntime 1.31.1): the tiny bundle's edge file gives bit-identical
# logits on x86 and on both emulated ARM64 CPUs (12 images, logits up to ~10). On the demo's
# efficientnet_lite0 (U8S8, 359 validation images) ARM64 and x86 agree on every answer, mean |logit
# difference| 0.00014, max 0.186 on logits up to 7.68 (2.4 %): the integer kernels may requantize one
# value a step apart, which a deep graph carries to the logits. The bound: 3 % of the largest logit.
RELATIVE_TOLERANCE = 0.03


def test_the_edge_file_answers_the_same_on_arm64_kernels(tmp_path):
    require("qemu-aarch64")
    try:
        root = rootfs()
    except Unavailable as exc:
        unavailable(str(exc))
    from imgcls.export.images import load_pixels, load_split
    from imgcls.models.core.card import ModelCard

    bundle = make_tiny_bundle(tmp_path, int8=True, classes=("cat", "dog", "owl"), per_class=8)
    edge = bundle / EDGE_FILE
    assert edge.is_file(), "an INT8 bundle whose gate passed has its edge file"
    split = load_split(tmp_path / "runs" / "tiny", None)
    images = load_pixels(split, (split.val + split.train)[:12], ModelCard.load(bundle).preprocess)
    assert images.pixels.shape[0] == 12

    x86, = run_logits([edge], images.pixels)
    for cpu in ARM_CPUS:
        arm, = run_logits([edge], images.pixels, cpu, root)
        figures = agreement(arm, x86, images.labels)
        assert arm.shape == x86.shape == (12, 3)
        assert figures["top1_agreement"] == 1.0, (cpu, figures)
        assert figures["max_abs_logit_diff"] <= RELATIVE_TOLERANCE * figures["logit_scale"], (cpu, figures)
        assert figures["top1"] == figures["top1_x86_ort"]
    assert np.abs(x86).max() > 0.1, "the logits say something (a dead model would agree trivially)"


def test_a_machine_that_cannot_build_the_root_filesystem_says_why(tmp_path, monkeypatch):
    """No apt-get (not Debian): Unavailable with the reason, which the test above turns into a skip."""
    import shutil

    tools = tmp_path / "bin"
    tools.mkdir()
    for program in ("bash", "mkdir", "mktemp", "rm"):
        (tools / program).symlink_to(shutil.which(program))
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(Unavailable, match="no apt-get on this machine"):
        rootfs()
