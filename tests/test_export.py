"""Export: tiny checkpoint -> bundle with real ONNX Runtime; the validator can fail."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imgcls.export.config import ExportConfig
from imgcls.export.convert import save_onnx, to_onnx
from imgcls.export.errors import ExportError, ParityError
from imgcls.export.images import load_split, parity_pixels
from imgcls.export.validate import check_parity
from imgcls.models.core.atomic import sha256_file
from imgcls.models.core.card import ModelCard
from imgcls.models.training.checkpoint import load_checkpoint
from imgcls.models.core.preprocess import Preprocess
from tests.factories import make_tiny_bundle, make_tiny_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def test_bundle_layout_metadata_and_parity(tiny_bundle):
    assert sorted(p.name for p in tiny_bundle.iterdir()) == [".imgcls.json", "card.json", "export_report.json",
                                                             "model.onnx"]
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left
    card = ModelCard.load(tiny_bundle)
    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    embedded = ModelCard.from_metadata_props({p.key: p.value for p in proto.metadata_props})
    assert embedded.class_names == card.class_names and embedded.preprocess == card.preprocess
    assert embedded.export["parity"] == card.export["parity"]
    parity = card.export["parity"]
    assert parity["passed"] and parity["images"] >= 2
    for name in ("batch_1", "batch_4"):
        assert parity[name]["max_abs_logit_diff"] <= 1e-4 and parity[name]["top1_agreement"] == 1.0
    assert card.export["input"] == {"name": "pixels", "dtype": "uint8", "layout": "NCHW", "height": 32,
                                    "width": 32, "normalized_in_graph": True}
    assert card.export["opset"] == 18 and card.export["exporter"] == "dynamo"
    assert card.export["files"]["model.onnx"]["bytes"] == (tiny_bundle / "model.onnx").stat().st_size
    assert card.lineage["sha256:model.onnx"] == sha256_file(tiny_bundle / "model.onnx")
    assert len(card.lineage["dataset_sha256"]) == 64
    report = json.loads((tiny_bundle / "export_report.json").read_text())
    assert report["parity"] == parity and report["graph"]["checker"] == "passed"


def test_graph_takes_uint8_with_dynamic_batch_and_matches_pytorch(tiny_bundle, tmp_path):
    card = ModelCard.load(tiny_bundle)
    sess = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, out.name) == ("pixels", "tensor(uint8)", "logits")
    model, _ = load_checkpoint(tiny_bundle.parent.parent / "runs" / "tiny")
    pixels = np.random.default_rng(1).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    logits = sess.run(["logits"], {"pixels": pixels})[0]
    assert logits.shape == (5, card.num_classes) and logits.dtype == np.float32
    with torch.no_grad():
        expected = model(torch.from_numpy(card.preprocess.normalize(pixels))).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_wrong_in_graph_normalisation_fails_parity_with_figures(tmp_path):
    """A graph normalising with a corrupted mean/std must be caught against the PyTorch reference."""
    run_dir = make_tiny_run(tmp_path)
    model, card = load_checkpoint(run_dir)
    split = load_split(run_dir, None)
    pixels = parity_pixels(split, card.preprocess, 8).pixels
    corrupted = Preprocess(card.preprocess.resize_size, card.preprocess.crop_size, card.preprocess.interpolation,
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    path = tmp_path / "bad.onnx"
    save_onnx(to_onnx(model, corrupted, opset=18), path)
    with pytest.raises(ParityError) as caught:
        check_parity(path, model, card.preprocess, pixels, atol=1e-4, batch=4)
    assert caught.value.figures["passed"] is False
    assert caught.value.figures["batch_1"]["max_abs_logit_diff"] > 1e-4
    assert "max |Δlogit|" in str(caught.value)
    # The same graph built with the card's own normalisation passes.
    save_onnx(to_onnx(model, card.preprocess, opset=18), path)
    assert check_parity(path, model, card.preprocess, pixels, atol=1e-4, batch=4)["passed"]


def test_run_without_images_is_refused_and_writes_nothing(tmp_path):
    run_dir = make_tiny_run(tmp_path)
    (run_dir / "split.json").unlink()
    out = tmp_path / "bundles" / "x"
    out.parent.mkdir()  # so a staging folder left behind would be seen
    with pytest.raises(ExportError, match="needs real images"):
        from imgcls.export.bundle import export_bundle

        export_bundle(run_dir, out, ExportConfig(progress=False))
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
