"""Speed truth per target: the card says how fast the kept INT8 file ran against fp32 on the exporting
CPU, in which format, for which target, and the export summary says it in one line."""
from __future__ import annotations

import json

import pytest

from imgcls.export.cli import main
from imgcls.models.core.cpu import cpu_features, isa_of, local_isa
from imgcls.export.speed import format_of, speed_line, speed_record
from imgcls.models.core.card import ModelCard
from tests.factories import make_tiny_run


def test_isa_names_the_integer_kernels_a_cpu_gets():
    assert isa_of("x86_64", {"avx2", "fma"}) == "avx2"
    assert isa_of("x86_64", {"avx2", "avx512f"}) == "avx512"
    assert isa_of("x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert isa_of("x86_64", {"avx2", "avx_vnni"}) == "avx_vnni"
    assert isa_of("aarch64", {"asimd", "asimddp"}) == "arm64_dotprod"
    assert isa_of("aarch64", {"asimd"}) == "arm64"


def test_speed_line_says_what_to_serve_on_this_cpu():
    assert speed_line(0.13, "avx2", "U8U8", True) == \
        "INT8 runs 0.13x fp32 on this CPU (AVX2, no VNNI, U8U8): for edge devices, serve fp32 here"
    assert speed_line(1.4, "avx512_vnni", "U8S8", True).endswith("serve INT8 here")
    assert speed_line(1.4, "avx512_vnni", "U8S8", False).endswith("its gate refused it; serve fp32")
    assert format_of({"activation_type": "QUInt8", "weight_type": "QInt8"}) == "U8S8"
    gate = {"speed_ratio": 0.5, "fp32_images_per_s": 100.0, "int8_images_per_s": 50.0, "benchmark_batch": 8}
    slow = speed_record(gate, "U8U8", True, {"machine": "x86_64", "flags": ["avx2"], "model": "m", "target": "x86"})
    assert slow["serve_here"] == "fp32" and slow["cpu"]["isa"] == "avx2" and slow["ratio_vs_fp32"] == 0.5
    fast = speed_record({**gate, "speed_ratio": 1.5, "int8_images_per_s": 150.0}, "U8S8", True,
                        {"machine": "x86_64", "flags": ["avx2", "avx512_vnni"], "model": "m", "target": "vnni"})
    assert fast["serve_here"] == "int8" and fast["cpu"]["isa"] == "avx512_vnni"
    assert speed_record({}, "U8U8", True) is None


@pytest.mark.slow
def test_card_and_report_carry_the_measured_speed_and_the_summary_says_it(tmp_path, capsys):
    run = make_tiny_run(tmp_path, classes=("cat", "dog", "owl"), per_class=10, train_steps=30)
    out = tmp_path / "bundle"
    code = main([str(run), "--out", str(out), "--int8", "--no-progress", "--calibration-size", "32"])
    assert code in (0, 3)
    int8 = ModelCard.load(out).export["int8"]
    speed = int8["speed"]
    gate = int8["gate"]
    assert speed["ratio_vs_fp32"] == pytest.approx(gate["int8_images_per_s"] / gate["fp32_images_per_s"], rel=1e-3)
    assert speed["batch"] == gate["benchmark_batch"] and speed["format"] == int8["int8_format"]
    assert int8["format"] == "QDQ"
    assert speed["cpu"]["isa"] == local_isa() and speed["cpu"]["model"] == cpu_features()["model"]
    assert speed["cpu"]["target"] == cpu_features()["target"]
    passed = int8["status"] == "passed"
    assert speed["serve_here"] == ("int8" if passed and speed["ratio_vs_fp32"] >= 1 else "fp32")
    assert int8["int8_format"] in ("U8U8", "U8S8", "S8S8")
    report = json.loads((out / "export_report.json").read_text())
    assert report["int8"]["speed"]["line"] == speed["line"]
    assert speed["line"].startswith(f"INT8 runs {speed['ratio_vs_fp32']:.2f}x fp32 on this CPU (")
    assert speed["line"] in capsys.readouterr().out


def test_vnni_tries_the_fast_format_with_the_retrained_head_before_the_accurate_one():
    from imgcls.export.config import ExportConfig
    from imgcls.export.int8_search import rung_plan

    config = ExportConfig(int8=True)
    assert [name for name, _ in rung_plan("vnni", "efficientnet_lite0", config)] == \
        ["ptq U8S8", "head U8S8", "ptq", "head", "mixed"]
    assert [name for name, _ in rung_plan("x86", "efficientnet_lite0", config)] == ["ptq", "head", "mixed"]
    assert [name for name, _ in rung_plan("vnni", "vit_b_16", config)] == ["ptq"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["vnni", "x86"])
def test_forced_target_orders_the_rungs_and_records_the_format_of_each(tmp_path, target):
    run = make_tiny_run(tmp_path, classes=("cat", "dog", "owl"), per_class=10, train_steps=30)
    out = tmp_path / "bundle"
    # a gate nothing can pass: every rung is tried, in order
    code = main([str(run), "--out", str(out), "--int8", "--no-progress", "--calibration-size", "32",
                 "--int8-target", target, "--max-accuracy-drop", "-100", "--no-mixed-precision"])
    assert code == 3
    int8 = ModelCard.load(out).export["int8"]
    assert int8["target"] == target and int8["target_choice"] == "--int8-target"
    tried = [a["method"] for a in int8["attempts"]]
    skipped = [s["method"] for s in int8.get("skipped", [])]
    if target == "vnni":
        assert tried == ["ptq (U8S8)", "ptq"], tried
        assert skipped == ["ptq + retrained head (U8S8)", "ptq + retrained head"], "too few images to refit"
    else:
        assert tried == ["ptq"] and not any("U8S8" in m for m in skipped)
    assert int8["speed"]["serve_here"] == "fp32" and int8["speed"]["line"].endswith("its gate refused it; serve fp32")
