"""INT8 for the edge: target from CPU features, the ladder (PTQ -> mixed precision), the `.ort` file."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from imgcls.export.cli import EXIT_REFUSED, main
from imgcls.models.core.cpu import cpu_features, cpu_flags, target_for
from imgcls.export.quantize import TARGET_TYPES, recipe_for
from imgcls.models.core.card import ModelCard
from tests.factories import make_tiny_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("int8"), classes=("cat", "dog", "owl", "fox"),
                         per_class=12, train_steps=40)


@pytest.fixture(scope="module")
def int8_bundle(fitted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8-bundle") / "bundle"
    assert main([str(fitted_run), "--out", str(out), "--int8", "--no-progress"]) == 0
    return out


def test_target_comes_from_the_cpu_features(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "fma"}
    assert target_for("x86_64", cpu_flags(cpuinfo)) == "x86"
    assert target_for("x86_64", {"avx2", "avx512_vnni"}) == "vnni"
    assert target_for("x86_64", {"avx2", "avx_vnni"}) == "vnni"
    assert target_for("aarch64", {"asimd", "asimddp"}) == "arm64"
    assert cpu_flags(tmp_path / "missing") == frozenset()
    features = cpu_features(cpuinfo)
    assert features["model"] == "AMD EPYC 7B12" and features["flags"] == ["avx2"]


def test_x86_without_vnni_does_not_use_the_saturating_u8s8_kernels():
    """The fault on AVX2 without VNNI: U8S8 (reduce_range or not) saturates there; x86 is U8U8 now."""
    x86 = recipe_for("x86", "efficientnet_lite0")
    assert (x86.activation_type, x86.weight_type, x86.reduce_range) == ("QUInt8", "QUInt8", False)
    assert TARGET_TYPES["vnni"] == ("QUInt8", "QUInt8", False) and TARGET_TYPES["arm64"][0] == "QInt8"
    assert recipe_for("vnni", "vit_b_16").dynamic_matmul


@pytest.mark.slow
def test_ladder_stops_at_the_first_passing_variant_and_records_the_gating_machine(int8_bundle, capsys):
    card = ModelCard.load(int8_bundle)
    int8 = card.export["int8"]
    first = "ptq (U8S8)" if int8["target"] == "vnni" else "ptq"  # VNNI tries its fast format first
    assert int8["status"] == "passed" and int8["method"] == first
    assert [a["method"] for a in int8["attempts"]] == [first], "no rung runs after a pass"
    assert int8["target"] in ("x86", "vnni", "arm64") and int8["target_choice"].startswith("auto")
    assert int8["gated_on"] == cpu_features() and int8["target"] == cpu_features()["target"]
    assert int8["gate"]["accuracy_drop_points"] <= 1.0
    report = json.loads((int8_bundle / "export_report.json").read_text())
    assert report["int8"] == int8


def test_edge_ort_file_gives_the_same_predictions_as_the_int8_onnx(int8_bundle):
    card = ModelCard.load(int8_bundle)
    edge = card.export["edge"]
    ort_file, config = int8_bundle / edge["ort"], int8_bundle / edge["operators_config"]
    assert ort_file.read_bytes()[4:8] == b"ORTM", "an ORT format (flatbuffer) file"
    ops = config.read_text()
    assert "QuantizeLinear" in ops or "QLinearConv" in ops, ops
    assert ModelCard.load(int8_bundle / "edge").class_names == card.class_names  # labels beside the .ort
    pixels = np.random.default_rng(3).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    options = ort.SessionOptions()
    runs = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"pixels": pixels})[0] for name, path in (("onnx", int8_bundle / "model.int8.onnx"),
                                                               ("ort", ort_file))}
    assert np.array_equal(runs["onnx"].argmax(1), runs["ort"].argmax(1))
    np.testing.assert_allclose(runs["ort"], runs["onnx"], atol=1e-4)
    assert edge["parity_vs_int8_onnx"]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_too_strict_gate_tries_every_rung_then_refuses_with_no_int8_file(fitted_run, tmp_path, capsys):
    out = tmp_path / "strict"
    code = main([str(fitted_run), "--out", str(out), "--int8", "--max-accuracy-drop", "-1", "--no-progress",
                 "--int8-target", "arm64", "--max-fp32-nodes", "2", "--mixed-size-budget", "1",
                 "--qat", "--qat-epochs", "1", "--qat-images", "20"])
    assert code == EXIT_REFUSED
    assert sorted(p.name for p in out.iterdir()) == [".imgcls.json", "card.json", "export_report.json", "model.onnx"]
    int8 = ModelCard.load(out).export["int8"]
    assert int8["status"] == "refused" and int8["target"] == "arm64" and int8["target_choice"] == "--int8-target"
    assert [a["method"] for a in int8["attempts"]] == ["ptq", "mixed (1 nodes fp32)", "mixed (2 nodes fp32)",
                                                       "qat (1 epochs)"]
    # 36 training images: too few to retrain the head honestly (tests/test_export_heldout.py)
    assert [s["method"] for s in int8["skipped"]] == ["ptq + retrained head"]
    assert all(not a["passed"] for a in int8["attempts"])
    assert len(int8["attempts"][2]["exclude_nodes"]) == 2, "mixed precision keeps the ranked nodes in fp32"
    qat = int8["attempts"][3]["qat"]
    assert qat["train_images"] == 20 and len(qat["mean_loss_per_epoch"]) == 1
    # QAT parity: the fake-quantized PyTorch model and the QDQ ONNX ORT runs pick the same classes.
    assert qat["parity"]["passed"] and qat["parity"]["top1_agreement"] >= 0.98 and qat["parity"]["images"] > 0
    assert "edge" not in ModelCard.load(out).export
    printed = capsys.readouterr()
    assert "refused" in printed.out  # each rung's line in the summary table
    assert "INT8 variant was not written" in printed.err and "Traceback" not in printed.err  # said once, plainly


def test_qat_model_without_fake_quant_is_the_fp32_graph(int8_bundle, tmp_path):
    """The QAT interpreter runs the prepared fp32 graph exactly; with fake quant it tracks the INT8 file."""
    import onnx

    from imgcls.export.qat import OnnxModule, QuantParams
    from imgcls.export.quantize import prepare

    prepared = tmp_path / "prepared.onnx"
    prepare(int8_bundle / "model.onnx", prepared)
    pixels = np.random.default_rng(5).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    fp32 = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).run(["logits"], {"pixels": pixels})[0]
    int8 = ort.InferenceSession(str(int8_bundle / "model.int8.onnx"),
                                providers=["CPUExecutionProvider"]).run(["logits"], {"pixels": pixels})[0]
    with torch.no_grad():
        plain = OnnxModule(onnx.load(str(prepared)), None).eval()(torch.from_numpy(pixels)).numpy()
        quant = QuantParams(onnx.load(str(int8_bundle / "model.int8.onnx")))
        faked = OnnxModule(onnx.load(str(prepared)), quant).eval()(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(plain, fp32, atol=1e-4)
    assert quant.activations and quant.weights, "scales of activations and weights read from the QDQ file"
    assert np.abs(faked - int8).mean() < np.abs(fp32 - int8).mean() + 1e-6, "fake quant moves towards the INT8 file"
