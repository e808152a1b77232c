"""The INT8 file gated here answers the same on x86 without VNNI (ORT's AVX2 kernels, run under QEMU)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.int8_isa import NO_VNNI_CPU, run_models
from imgcls.models.core.card import ModelCard
from tests.factories import make_tiny_bundle
from tests.system_tools import require

pytestmark = pytest.mark.slow


def test_the_exported_int8_file_gives_the_same_logits_on_avx2_without_vnni(tmp_path):
    require("qemu-x86_64")
    bundle = make_tiny_bundle(tmp_path, int8=True, classes=("cat", "dog", "owl"), per_class=8)
    assert ModelCard.load(bundle).export["int8"]["target"] in ("x86", "vnni"), "an x86 machine exports for x86"
    pixels = np.random.default_rng(7).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    native, emulated = (run_models([bundle / "model.int8.onnx"], pixels, cpu)[0] for cpu in (None, NO_VNNI_CPU))
    assert native.shape == emulated.shape == (12, 3)
    assert np.array_equal(native.argmax(1), emulated.argmax(1))
    np.testing.assert_allclose(emulated, native, atol=1e-4)
