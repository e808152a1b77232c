"""INT8 files whose kernels saturate on x86 without VNNI (U8S8, S8S8) are never chosen by ``auto`` there.

Real tiny INT8 bundles; the card's kernel format (``export.int8.int8_format``) and speed figure are
written into copies, and the CPU kind is given to the decision function, so each kind's path is taken
on any machine. One case loads through the real ``Predictor`` on this machine's own CPU kind.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import pytest

from imgcls.models.core.card import ModelCard
from imgcls.models.core.cpu import CpuKind, local_cpu
from imgcls.service import precision as precision_module
from imgcls.service.host.launcher import start_server
from imgcls.service.predictor import Predictor
from imgcls.service.runtime import RuntimeConfig
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow
AVX2 = CpuKind(kind="x86", isa="avx2")
VNNI = CpuKind(kind="vnni", isa="avx512_vnni")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("int8"), int8=True, classes=("cat", "dog"), per_class=6)
    assert (bundle / "model.int8.onnx").is_file()
    return bundle


def with_format(source: Path, dest: Path, fmt: str, kind: str, ratio: float = 1.5) -> Path:
    """A copy whose card says the INT8 file's kernels are ``fmt`` and ran ``ratio``× fp32 on ``kind``."""
    shutil.copytree(source, dest)
    card = json.loads((dest / "card.json").read_text())
    int8 = card["export"]["int8"]
    int8["format"], int8["int8_format"] = "QDQ", fmt
    int8["speed"] = {"ratio_vs_fp32": ratio, "format": fmt,
                     "cpu": {"isa": "test", "target": kind, "model": "test CPU", "machine": "test"}}
    (dest / "card.json").write_text(json.dumps(card, indent=1))
    return dest


def decide(bundle: Path, requested: str, cpu: CpuKind) -> precision_module.PrecisionChoice:
    return precision_module.choose(bundle, ModelCard.load(bundle), requested, RuntimeConfig(), on_gpu=False, cpu=cpu)


@pytest.mark.parametrize("fmt", ["U8S8", "S8S8"])
def test_auto_never_serves_a_saturating_int8_file_on_x86_without_vnni(int8_bundle, tmp_path, fmt):
    fast_but_wrong = with_format(int8_bundle, tmp_path / fmt, fmt, "x86", ratio=1.5)
    choice = decide(fast_but_wrong, "auto", AVX2)
    assert choice.precision == "fp32" and not choice.warn
    assert choice.reason.startswith("serving fp32: ") and fmt in choice.reason and "AVX2, no VNNI" in choice.reason
    assert "saturate" in choice.reason
    # the same file with VNNI, and a U8U8 file on AVX2, are served as INT8 when faster
    assert decide(with_format(int8_bundle, tmp_path / f"{fmt}-vnni", fmt, "vnni"), "auto", VNNI).precision == "int8"
    assert decide(with_format(int8_bundle, tmp_path / f"{fmt}-u8u8", "U8U8", "x86"), "auto", AVX2).precision == "int8"


def test_explicit_int8_that_saturates_here_is_served_with_a_warning_naming_the_format(int8_bundle, tmp_path):
    u8s8 = with_format(int8_bundle, tmp_path / "u8s8", "U8S8", "x86", ratio=1.5)
    choice = decide(u8s8, "int8", AVX2)
    assert choice.precision == "int8" and choice.warn
    assert "U8S8" in choice.reason and "saturate" in choice.reason and "answers may differ" in choice.reason
    on_vnni = decide(with_format(int8_bundle, tmp_path / "vnni", "U8S8", "vnni"), "int8", VNNI)
    assert on_vnni.precision == "int8" and not on_vnni.warn


def test_the_kernel_format_is_read_from_int8_format_not_the_quantization_format(int8_bundle, tmp_path):
    bundle = with_format(int8_bundle, tmp_path / "fields", "U8S8", "x86")
    card = json.loads((bundle / "card.json").read_text())
    card["export"]["int8"].pop("speed")  # the legacy gate figure: its words come from int8_format
    card["export"]["int8"]["gated_on"] = {"machine": "x86_64", "model": "test CPU", "target": "vnni"}
    card["export"]["int8"]["gate"]["speed_ratio"] = 1.3
    (bundle / "card.json").write_text(json.dumps(card, indent=1))
    loaded = ModelCard.load(bundle)
    assert precision_module.kernel_format(loaded) == "U8S8"
    figure = precision_module.card_speed(loaded, VNNI)
    assert figure is not None and figure.fmt == "U8S8"
    assert decide(bundle, "auto", AVX2).precision == "fp32", "QDQ must not hide the U8S8 kernels"


def test_the_predictor_on_this_cpu_serves_a_u8s8_file_only_where_it_does_not_saturate(int8_bundle, tmp_path, caplog):
    here = local_cpu()
    bundle = with_format(int8_bundle, tmp_path / "here", "U8S8", here.kind, ratio=1.5)
    with caplog.at_level(logging.INFO, logger="imgcls.service.predictor"):
        with Predictor.load(bundle, precision="auto", device="cpu") as predictor:
            chosen = predictor.precision
    lines = [r.getMessage() for r in caplog.records if "serving" in r.getMessage()]
    if here.kind == "x86":
        assert chosen == "fp32" and any("U8S8" in line and "saturate" in line for line in lines)
    else:
        assert chosen == "int8" and any("INT8 runs 1.50× fp32" in line for line in lines)


def test_the_arm64_benchmark_records_the_kernel_format_not_qdq(int8_bundle):
    from benchmarks.int8_arm64 import EDGE_FILE, gate_images

    if not (int8_bundle / EDGE_FILE).is_file():
        pytest.fail(f"the tiny INT8 bundle has no {EDGE_FILE}")
    _, meta = gate_images(int8_bundle.parents[1] / "runs" / "tiny", int8_bundle, None)
    card = ModelCard.load(int8_bundle)
    assert meta["int8_format"] == card.export["int8"]["int8_format"] != card.export["int8"]["format"]
    assert meta["int8_format"] in ("U8U8", "U8S8", "S8S8")


def test_imgcls_serve_on_this_cpu_serves_a_u8s8_file_only_where_it_does_not_saturate(int8_bundle, tmp_path):
    here = local_cpu()
    bundle = with_format(int8_bundle, tmp_path / "u8s8", "U8S8", here.kind, ratio=1.5)
    log = tmp_path / "serve.log"
    server = start_server(bundle, log, args=("--workers", "1"))
    try:
        served = httpx.get(server.url + "/model", timeout=10).json()["precision"]
    finally:
        server.stop()
    text = log.read_text()
    if here.kind == "x86":
        assert served == "fp32" and "u8s8: serving fp32: the INT8 file's kernels are U8S8" in text
    else:
        assert served == "int8" and "u8s8: serving int8: INT8 runs 1.50× fp32 on this CPU" in text
