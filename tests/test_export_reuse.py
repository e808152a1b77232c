"""``imgcls export`` of a head-strategy run builds model.onnx from the backbone graph training converted
(+ the classifier as a Gemm) when its identity matches the checkpoint, and converts in full otherwise."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from imgcls.export.bundle import export_bundle
from imgcls.export.config import ExportConfig
from imgcls.export.convert import to_onnx
from imgcls.export.head_refit import find_head
from imgcls.export.splice import FULL, REUSED
from imgcls.export.validate import session
from imgcls.models.training import backbone_graph
from imgcls.models.training.checkpoint import load_checkpoint, save_checkpoint
from imgcls.models.training.cli import main
from tests.factories import make_image_folder, make_tiny_run

torch.set_num_threads(1)
CONFIG = ExportConfig(progress=False)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    data = make_image_folder(tmp / "data", per_class=8, size=(36, 36))
    run = tmp / "run"
    assert main(["--data", str(data), "--out", str(run), "--arch", "tiny", "--weights", "none", "--strategy", "head",
                 "--epochs", "1", "--loader-workers", "0", "--threads", "1"]) == 0
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")  # split.json names the images by their absolute root


def _export(run, out):
    export_bundle(run, out, CONFIG)
    return json.loads((out / "export_report.json").read_text())


def _graph_file(run):
    return run / "feature_cache" / backbone_graph.FILENAME


def test_head_run_keeps_its_backbone_graph_and_the_export_reuses_it(head_run, tmp_path):
    saved = onnx.load(str(_graph_file(head_run)))
    identity = json.loads({p.key: p.value for p in saved.metadata_props}[backbone_graph.IDENTITY_KEY])
    assert identity["arch"] == "tiny" and identity["opset"] == 18 and identity["exporter"] == "dynamo"
    assert len(identity["backbone_sha256"]) == 64 and identity["torch"] == torch.__version__
    report = _export(head_run, tmp_path / "bundle")
    assert report["convert"]["source"] == REUSED and report["parity"]["passed"]
    reused = onnx.load(str(tmp_path / "bundle" / "model.onnx"))
    assert find_head(reused) is not None  # the INT8 ladder's head rung finds the classifier
    model, card = load_checkpoint(head_run)
    full = to_onnx(model, card.preprocess, opset=18)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    ours, theirs = (session(p.SerializeToString()).run(["logits"], {"pixels": pixels})[0] for p in (reused, full))
    assert ours.shape == (5, 3)
    np.testing.assert_allclose(ours, theirs, atol=CONFIG.parity_atol, rtol=0)


def test_changed_backbone_weight_converts_in_full(head_run, tmp_path):
    run = _copy(head_run, tmp_path)
    model, card = load_checkpoint(run)
    with torch.no_grad():
        model.features[1].running_mean += 0.01  # a BatchNorm buffer: as a fine-tuned backbone would differ
    save_checkpoint(run / "checkpoint", model, card)
    report = _export(run, tmp_path / "bundle")
    assert report["convert"]["source"] == FULL and "backbone_sha256" in report["convert"]["why"]
    assert report["parity"]["passed"]


@pytest.mark.parametrize("damage", ["garbage", "no identity"])
def test_unreadable_saved_graph_converts_in_full(head_run, tmp_path, damage):
    run = _copy(head_run, tmp_path)
    if damage == "garbage":
        _graph_file(run).write_bytes(b"\x08\x07not a model")
    else:
        proto = onnx.load(str(_graph_file(run)))
        del proto.metadata_props[:]
        onnx.save(proto, str(_graph_file(run)))
    report = _export(run, tmp_path / "bundle")
    assert report["convert"]["source"] == FULL and report["parity"]["passed"]
    assert ("unreadable" if damage == "garbage" else "no identity") in report["convert"]["why"]


def test_tampered_graph_with_its_identity_fails_parity_then_converts_in_full(head_run, tmp_path):
    run = _copy(head_run, tmp_path)
    proto = onnx.load(str(_graph_file(run)))
    conv = next(init for init in proto.graph.initializer if init.name.endswith("features.0.weight"))
    conv.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(conv) * 2, conv.name))
    onnx.save(proto, str(_graph_file(run)))
    report = _export(run, tmp_path / "bundle")
    assert report["convert"]["source"] == FULL and "failed its check" in report["convert"]["why"]
    assert report["parity"]["passed"]


def test_other_exporter_or_no_saved_graph_converts_in_full(head_run, tmp_path):
    export_bundle(head_run, tmp_path / "legacy", ExportConfig(progress=False, exporter="legacy"))
    legacy = json.loads((tmp_path / "legacy" / "export_report.json").read_text())["convert"]
    assert legacy["source"] == FULL and "exporter" in legacy["why"]
    report = _export(make_tiny_run(tmp_path / "finetuned"), tmp_path / "bundle")  # no feature cache
    assert report["convert"]["source"] == FULL and "no backbone.onnx" in report["convert"]["why"]
