"""An INT8 file made for x86 (U8U8, what an AVX2 machine exports) answers the same on x86 without VNNI
(ORT's AVX2 kernels, run under QEMU) as on the exporting machine's kernels. (A VNNI machine's fast
U8S8 file is for VNNI CPUs: its card says so, ``target`` ``vnni`` and ``int8_format`` ``U8S8``.)"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.int8_isa import NO_VNNI_CPU, run_models
from imgcls.export.bundle import export_bundle
from imgcls.export.config import ExportConfig
from imgcls.models.core.card import ModelCard
from tests.factories import make_tiny_run
from tests.system_tools import require

pytestmark = pytest.mark.slow


def test_the_int8_file_made_for_x86_gives_the_same_logits_on_avx2_without_vnni(tmp_path):
    require("qemu-x86_64")
    run = make_tiny_run(tmp_path, classes=("cat", "dog", "owl"), per_class=8, train_steps=30)
    bundle = tmp_path / "bundle"
    export_bundle(run, bundle, ExportConfig(int8=True, calibration_size=64, progress=False, int8_target="x86"))
    int8 = ModelCard.load(bundle).export["int8"]
    assert int8["target"] == "x86" and int8["int8_format"] == "U8U8", "x86 without VNNI gets U8U8"
    pixels = np.random.default_rng(7).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    native, emulated = (run_models([bundle / "model.int8.onnx"], pixels, cpu)[0] for cpu in (None, NO_VNNI_CPU))
    assert native.shape == emulated.shape == (12, 3)
    assert np.array_equal(native.argmax(1), emulated.argmax(1))
    np.testing.assert_allclose(emulated, native, atol=1e-4)
