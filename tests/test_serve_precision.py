"""``--precision auto``: the fastest variant that passed its gate on this CPU's kind, and one line saying why.

Real bundles (the tiny model exported with INT8), real ONNX Runtime, real ``imgcls serve``. The speed
figures are written into copies of one bundle's card (``export.int8.speed`` is not bound to the ONNX
files), so each path is taken on purpose whatever this machine's INT8 speed is.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import pytest

from imgcls.models.core.cpu import local_cpu
from imgcls.service import precision as precision_module
from imgcls.service.host.launcher import start_server
from imgcls.service.predictor import Predictor
from tests.factories import make_tiny_bundle, make_tiny_run

pytestmark = pytest.mark.slow
OTHER_KIND = {"vnni": "arm64", "x86": "arm64", "arm64": "x86"}


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("int8"), int8=True, classes=("cat", "dog", "owl"), per_class=8)
    assert (bundle / "model.int8.onnx").is_file()
    return bundle


@pytest.fixture(scope="module")
def refused_bundle(tmp_path_factory) -> Path:
    """A bundle whose INT8 gate refused it for real (an allowed drop below zero refuses anything)."""
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig

    root = tmp_path_factory.mktemp("refused")
    run = make_tiny_run(root, train_steps=30)
    out = root / "bundles" / "refused"
    export_bundle(run, out, ExportConfig(int8=True, calibration_size=64, progress=False, max_accuracy_drop=-1.0))
    card = json.loads((out / "card.json").read_text())
    assert card["export"]["int8"]["status"] == "refused" and not (out / "model.int8.onnx").exists()
    return out


def with_speed(source: Path, dest: Path, ratio: float | None, kind: str | None, legacy: bool = False) -> Path:
    """A copy of ``source`` whose card says INT8 ran ``ratio``× fp32 on a CPU of ``kind`` (None: no figure)."""
    shutil.copytree(source, dest)
    card = json.loads((dest / "card.json").read_text())
    int8 = card["export"]["int8"]
    int8.pop("speed", None)
    int8["gated_on"] = {**int8.get("gated_on", {}), "target": "none"}
    if ratio is not None and legacy:  # cards written before export.int8.speed: the gate's ratio + gated_on
        int8["gated_on"] = {"machine": "x86_64", "model": "test CPU", "target": kind}
        int8["gate"]["speed_ratio"] = ratio
    elif ratio is not None:
        int8["speed"] = {"ratio_vs_fp32": ratio, "format": "U8U8",
                         "cpu": {"isa": "test", "target": kind, "model": "test CPU", "machine": "test"}}
    (dest / "card.json").write_text(json.dumps(card, indent=1))
    return dest


def served(bundle: Path, precision: str, caplog) -> tuple[str, list[logging.LogRecord]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgcls.service.predictor"):
        with Predictor.load(bundle, precision=precision, device="cpu") as predictor:
            chosen = predictor.precision
    return chosen, [r for r in caplog.records if r.name == "imgcls.service.predictor" and "serving" in r.getMessage()]


def test_auto_serves_int8_only_where_the_card_says_it_is_faster_on_this_cpu_kind(int8_bundle, tmp_path, caplog):
    kind = local_cpu().kind
    fast = with_speed(int8_bundle, tmp_path / "fast", 1.5, kind)
    slow = with_speed(int8_bundle, tmp_path / "slow", 0.13, kind)
    legacy = with_speed(int8_bundle, tmp_path / "legacy", 1.25, kind, legacy=True)

    chosen, lines = served(fast, "auto", caplog)
    assert chosen == "int8" and len(lines) == 1
    assert "serving int8: INT8 runs 1.50× fp32 on this CPU" in lines[0].getMessage()
    assert "U8U8" in lines[0].getMessage() and local_cpu().words in lines[0].getMessage()

    chosen, lines = served(slow, "auto", caplog)
    assert chosen == "fp32" and "serving fp32: INT8 runs 0.13× fp32 on this CPU" in lines[0].getMessage()

    chosen, lines = served(legacy, "auto", caplog)
    assert chosen == "int8" and "INT8 runs 1.25× fp32" in lines[0].getMessage() and "gate" in lines[0].getMessage()


def test_explicit_int8_that_is_slower_here_is_served_with_a_warning(int8_bundle, tmp_path, caplog):
    slow = with_speed(int8_bundle, tmp_path / "slow", 0.13, local_cpu().kind)
    chosen, lines = served(slow, "int8", caplog)
    assert chosen == "int8" and lines[0].levelno == logging.WARNING
    assert "serving int8 as asked, but INT8 runs 0.13× fp32" in lines[0].getMessage()
    assert "--precision auto would serve fp32" in lines[0].getMessage()
    fast = with_speed(int8_bundle, tmp_path / "fast", 1.5, local_cpu().kind)
    chosen, lines = served(fast, "int8", caplog)
    assert chosen == "int8" and lines[0].levelno == logging.INFO


def test_a_card_without_a_figure_for_this_cpu_kind_is_timed_here_once_and_cached(
        int8_bundle, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    elsewhere = with_speed(int8_bundle, tmp_path / "elsewhere", 9.0, OTHER_KIND[local_cpu().kind])
    chosen, lines = served(elsewhere, "auto", caplog)
    message = lines[0].getMessage()
    assert "no figure for this CPU kind in the card: timed here at load" in message
    cache = json.loads((tmp_path / "cache" / precision_module.SPEED_CACHE).read_text())
    (key, figure), = cache.items()
    assert key.endswith("@" + local_cpu().isa) and figure["kind"] == local_cpu().kind
    assert figure["fp32_images_per_s"] > 0 and figure["int8_images_per_s"] > 0
    assert chosen == ("int8" if figure["ratio_vs_fp32"] >= 1.0 else "fp32"), "the other kind's 9× is not used"
    assert f"INT8 runs {figure['ratio_vs_fp32']:.2f}× fp32" in message

    chosen_again, lines = served(with_speed(int8_bundle, tmp_path / "again", None, None), "auto", caplog)
    assert chosen_again == chosen and "timed here before, cached in" in lines[0].getMessage()


def test_auto_with_a_refused_int8_gate_serves_fp32_and_says_so(refused_bundle, caplog):
    chosen, lines = served(refused_bundle, "auto", caplog)
    assert chosen == "fp32"
    assert "serving fp32: the bundle's INT8 gate refused it (top-1" in lines[0].getMessage()


def test_imgcls_serve_defaults_to_auto_and_says_what_each_model_serves(
        int8_bundle, refused_bundle, tmp_path):
    kind = local_cpu().kind
    fast = with_speed(int8_bundle, tmp_path / "fast", 1.5, kind)
    slow = with_speed(int8_bundle, tmp_path / "slow", 0.13, kind)
    log = tmp_path / "serve.log"
    server = start_server([fast, slow, refused_bundle], log, args=("--workers", "1"))
    try:
        models = {m["name"]: m for m in httpx.get(server.url + "/models", timeout=10).json()["models"]}
        assert {name: m["precision"] for name, m in models.items()} == {"fast": "int8", "slow": "fp32",
                                                                        "refused": "fp32"}
        assert httpx.get(server.url + "/model", params={"model": "fast"}, timeout=10).json()["precision"] == "int8"
    finally:
        server.stop()
    text = log.read_text()
    assert "fast: serving int8: INT8 runs 1.50× fp32 on this CPU" in text
    assert "slow: serving fp32: INT8 runs 0.13× fp32 on this CPU" in text
    assert "refused: serving fp32: the bundle's INT8 gate refused it" in text

    log = tmp_path / "serve-int8.log"
    server = start_server(slow, log, args=("--workers", "1", "--precision", "int8"))
    try:
        model = httpx.get(server.url + "/model", timeout=10).json()
        assert model["precision"] == "int8"
    finally:
        server.stop()
    assert "WARNING" in log.read_text() and "slow: serving int8 as asked, but INT8 runs 0.13× fp32" in log.read_text()


def test_on_a_gpu_auto_serves_fp16_when_its_gate_passed_else_fp32(int8_bundle, tmp_path):
    """The choice itself (this machine has no GPU to load on): fp16 where the bundle holds a gated one."""
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig
    from imgcls.models.core.card import ModelCard
    from imgcls.service.runtime import RuntimeConfig

    run = make_tiny_run(tmp_path, train_steps=10)
    half = tmp_path / "bundles" / "half"
    export_bundle(run, half, ExportConfig(fp16=True, progress=False))
    assert ModelCard.load(half).export["fp16"]["status"] == "passed"
    choice = precision_module.choose(half, ModelCard.load(half), "auto", RuntimeConfig(device="cpu"), on_gpu=True)
    assert (choice.precision, choice.reason) == ("fp16", "serving fp16: on a GPU, and its gate passed")
    choice = precision_module.choose(int8_bundle, ModelCard.load(int8_bundle), "auto", RuntimeConfig(), on_gpu=True)
    assert choice.precision == "fp32" and choice.reason == "serving fp32 on the GPU: the bundle has no fp16 variant"
