"""The Predictor on real bundles written by the real export: results, batching, refusals at load."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from tests.factories import make_tiny_bundle
from imgcls.models.core.atomic import sha256_file
from imgcls.models.core.card import METADATA_KEY, ModelCard
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.service.predictor import BundleError, DeviceError, Prediction, Predictor


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"), train_steps=20)


@pytest.fixture(scope="module")
def images(bundle):
    return sorted((bundle.parents[1] / "data").rglob("*_00[0-5].*"))


@pytest.fixture(scope="module")
def predictor(bundle):
    with Predictor.load(bundle, device="cpu", threads=1, decode_threads=2) as loaded:
        yield loaded


def test_load_exposes_what_runs(predictor, bundle):
    assert predictor.provider == "CPUExecutionProvider"
    assert predictor.precision == "fp32"
    assert predictor.card.class_names == ("cat", "dog", "owl")
    assert predictor.model_version.endswith(sha256_file(bundle / "model.onnx")[:12])
    assert predictor.describe()["intra_op_threads"] == 1


def test_predict_preserves_order_and_reports_bad_inputs(predictor, images):
    sources = [images[0], b"not an image", images[1].read_bytes(), b"", str(images[2])] + images[3:]
    results = predictor.predict(sources, top_k=2, batch_size=3)
    assert len(results) == len(sources)
    assert isinstance(results[1], ImageDecodeError) and results[1].reason == "not_an_image"
    assert isinstance(results[3], ImageDecodeError) and results[3].reason == "empty"
    for source, result in zip(sources, results):
        if isinstance(result, ImageDecodeError):
            continue
        (alone,) = predictor.predict([source], top_k=2, batch_size=1)
        assert [p.label for p in result] == [p.label for p in alone]
        assert [p.score for p in result] == pytest.approx([p.score for p in alone], abs=1e-6)


def test_batch_of_one_equals_the_matching_row_of_a_batch(predictor, images):
    pixels = np.stack([predictor.decode(path) for path in images])
    batch = predictor.infer(pixels)
    assert batch.shape == (len(images), 3)
    for i in range(len(images)):
        single = predictor.infer(pixels[i:i + 1])[0]
        np.testing.assert_allclose(single, batch[i], atol=1e-6)
        assert [p.index for p in predictor.top_k(single, 3)] == [p.index for p in predictor.top_k(batch[i], 3)]


def test_padding_to_a_run_size_returns_only_the_real_rows(predictor, images):
    pixels = np.stack([predictor.decode(path) for path in images[:3]])
    padded = predictor.infer(pixels, pad_to=8)
    assert padded.shape == (3, 3)
    np.testing.assert_allclose(padded, predictor.infer(pixels), atol=1e-6)
    assert predictor.infer(pixels, pad_to=2).shape == (3, 3)  # never truncates


def test_top_k_is_clamped_sorted_and_sums_to_at_most_one(predictor, images):
    for result in predictor.predict(images, top_k=50):
        assert len(result) == 3 and all(isinstance(p, Prediction) for p in result)
        scores = [p.score for p in result]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5) and sum(scores) <= 1.0 + 1e-6
        assert {p.label for p in result} == {"cat", "dog", "owl"}
    (top1,) = predictor.predict(images[:1], top_k=1)
    assert len(top1) == 1 and 1 / 3 < top1[0].score <= 1.0
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(images[:1], top_k=0)


def test_infer_rejects_wrong_input(predictor):
    with pytest.raises(ValueError, match="uint8"):
        predictor.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        predictor.infer(np.zeros((1, 3, 40, 40), np.uint8))
    assert predictor.infer(np.zeros((0, 3, 32, 32), np.uint8)).shape == (0, 3)


def test_decode_limits_are_configurable(bundle, images):
    with Predictor.load(bundle, device="cpu", max_bytes=64) as strict:
        with pytest.raises(ImageDecodeError) as info:
            strict.decode(images[0])
    assert info.value.reason == "too_large"


def test_cuda_not_available_is_an_error(bundle):
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        Predictor.load(bundle, device="cuda")


# ------------------------------------------------------------------ refusals at load
@pytest.fixture
def copy(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _rehash(bundle_dir, name="model.onnx"):
    """Make card.json's lineage agree with the file, so the next check down is the one tested."""
    card = ModelCard.load(bundle_dir)
    card.updated(lineage={f"sha256:{name}": sha256_file(bundle_dir / name)}).save(bundle_dir)


def _rewrite(bundle_dir, **card_changes):
    """Change card.json and the card embedded in model.onnx the same way (a consistent lie)."""
    card = ModelCard.load(bundle_dir).updated(**card_changes)
    proto = onnx.load(str(bundle_dir / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = card.to_json()
    onnx.save(proto, str(bundle_dir / "model.onnx"))
    card.save(bundle_dir)
    _rehash(bundle_dir)


def test_refuses_missing_onnx(copy):
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="no fp32 model file model.onnx"):
        Predictor.load(copy, device="cpu")
    with pytest.raises(BundleError, match="no int8 model file"):
        Predictor.load(copy, precision="int8", device="cpu")


def test_refuses_corrupt_onnx(copy):
    (copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        Predictor.load(copy, device="cpu")
    _rehash(copy)
    with pytest.raises(BundleError, match="cannot load it as an ONNX model"):
        Predictor.load(copy, device="cpu")


def test_refuses_a_swapped_onnx(copy, tmp_path):
    other = make_tiny_bundle(tmp_path / "other", classes=("ant", "bee", "cow", "elk"), per_class=4)
    shutil.copyfile(other / "model.onnx", copy / "model.onnx")
    with pytest.raises(BundleError, match="sha256"):
        Predictor.load(copy, device="cpu")
    _rehash(copy)  # even with a matching hash, the embedded card gives the swap away
    with pytest.raises(BundleError, match="embedded in the ONNX metadata disagrees with card.json on 'class_names'"):
        Predictor.load(copy, device="cpu")


def test_refuses_a_card_with_the_wrong_class_count(copy):
    data = json.loads((copy / "card.json").read_text())
    data["class_names"].append("emu")
    (copy / "card.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="class_names"):
        Predictor.load(copy, device="cpu")
    _rewrite(copy, class_names=("cat", "dog", "owl", "emu"))  # card and metadata agree; the graph does not
    with pytest.raises(BundleError, match="graph outputs 3 classes, card.json class_names has 4"):
        Predictor.load(copy, device="cpu")


def test_refuses_a_card_with_the_wrong_input_size(copy):
    card = ModelCard.load(copy)
    bigger = type(card.preprocess)(**{**card.preprocess.to_dict(), "resize_size": 48, "crop_size": 40})
    _rewrite(copy, preprocess=bigger, export={"input": {**card.export["input"], "height": 40, "width": 40}})
    with pytest.raises(BundleError, match=r"input shape .* \[N, 3, 40, 40\]"):
        Predictor.load(copy, device="cpu")
