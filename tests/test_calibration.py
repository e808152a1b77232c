"""Calibration and abstention: the temperature fit, the card, and one temperature applied alike by the
real server (`POST /classify`) and `imgcls score`, with abstention in both.

One tiny bundle whose card carries a temperature (set on the checkpoint before export, as training
does) and one real server for the module.
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from imgcls.models.core.bundle import BundleError
from imgcls.models.core.calibration import (
    abstains, calibration_figures, coverage_curve, fit_temperature, negative_log_likelihood, softmax, uncalibrated,
)
from imgcls.models.core.card import CardError, ModelCard
from imgcls.models.core.preprocess import Preprocess
from imgcls.service.host.launcher import start_server
from imgcls.service.predictor import Predictor
from imgcls.service.scoring import cli as score
from imgcls.service.scoring.outputs import read_rows
from tests.conftest import encode, make_image
from tests.factories import make_image_folder, make_tiny_run

TEMPERATURE = 2.5
CARD_MIN_SCORE = 0.2


def sampled(n: int = 20000, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 3.0
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("factor", [3.0, 0.4])
def test_fit_recovers_a_known_scale(factor):
    """Logits scaled by a known factor: the fitted temperature is that factor, NLL falls, top-1 stays."""
    logits, labels = sampled()
    scaled = logits * factor
    temperature = fit_temperature(scaled, labels)
    assert temperature == pytest.approx(factor, rel=0.04)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.04)
    figures = calibration_figures(scaled, labels, temperature)
    assert figures["nll_after"] < figures["nll_before"] - 0.01
    assert figures["ece_after"] < 0.02 < figures["ece_before"]
    assert negative_log_likelihood(scaled, labels, temperature) == pytest.approx(figures["nll_after"])
    np.testing.assert_array_equal((scaled / temperature).argmax(1), scaled.argmax(1))


def test_uncalibrated_scores_are_recovered_from_calibrated_ones():
    logits, _ = sampled(200)
    calibrated = softmax(logits / TEMPERATURE).astype(np.float32)
    np.testing.assert_allclose(uncalibrated(calibrated, TEMPERATURE), softmax(logits), atol=1e-5)


def test_abstention_and_coverage_curve():
    assert abstains(0.3, 0.5) and not abstains(0.5, 0.5) and not abstains(0.01, None)
    curve = coverage_curve([0.9, 0.6, 0.3], [True, True, False], points=11)
    at = {round(p["min_score"], 1): p for p in curve}
    assert at[0.0] == {"min_score": 0.0, "coverage": 1.0, "accuracy": pytest.approx(2 / 3)}
    assert at[0.5]["coverage"] == pytest.approx(2 / 3) and at[0.5]["accuracy"] == 1.0
    assert at[1.0]["coverage"] == 0.0 and at[1.0]["accuracy"] is None


def test_cards_without_calibration_still_load_with_temperature_one(tmp_path):
    old = {"format_version": 1, "arch": "tiny", "base_weights": "none", "class_names": ["a", "b"],
           "preprocess": Preprocess(36, 32).to_dict()}
    card = ModelCard.from_dict(old)
    assert card.temperature == 1.0 and card.min_score is None
    assert "calibration" not in card.to_dict()  # an old card is written back unchanged
    fitted = ModelCard.from_dict({**old, "calibration": {"temperature": 0.7, "min_score": 0.4}})
    assert (fitted.temperature, fitted.min_score) == (0.7, 0.4)
    for bad in ({"temperature": 0}, {"temperature": "2"}, {"min_score": 1.5}, {"min_score": True}):
        with pytest.raises(CardError, match="calibration"):
            ModelCard.from_dict({**old, "calibration": bad})


# ---------------------------------------------------------------- one calibrated bundle, one server
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A fitted tiny run whose checkpoint card carries T and a default min_score, exported for real."""
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig

    root = tmp_path_factory.mktemp("calibrated")
    run = make_tiny_run(root, train_steps=30)
    card = ModelCard.load(run / "checkpoint")
    card.updated(calibration={"temperature": TEMPERATURE, "method": "test", "fitted_on": "test"}).save(run / "checkpoint")
    out = root / "bundle"
    export_bundle(run, out, ExportConfig(progress=False, min_score=CARD_MIN_SCORE))
    return out


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    handle = start_server(bundle, tmp_path_factory.mktemp("calibrated-log") / "serve.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrated-images")
    paths = []
    for seed in range(4):
        path = folder / f"image_{seed}.png"
        path.write_bytes(encode(make_image(70, 50, seed=seed)))
        paths.append(path)
    return paths


def raw_logits(bundle, paths) -> np.ndarray:
    """The graph's own logits (plain ONNX Runtime, no Predictor) for the files."""
    import onnxruntime as ort

    card = ModelCard.load(bundle)
    pixels = np.stack([card.preprocess.pixels(card.preprocess.load(p)) for p in paths])
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixels": pixels})[0]


def test_export_keeps_the_temperature_and_records_min_score(bundle):
    card = ModelCard.load(bundle)
    assert card.temperature == TEMPERATURE and card.min_score == CARD_MIN_SCORE
    with Predictor.load(bundle, threads=1) as predictor:
        assert predictor.card.calibration == card.calibration  # the embedded copy agrees


def test_classify_and_score_apply_the_same_temperature(bundle, client, images, tmp_path):
    expected = softmax(raw_logits(bundle, images) / TEMPERATURE)
    plain = softmax(raw_logits(bundle, images))
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
    body = client.post("/classify", files=files, params={"top_k": 3}).json()
    out = tmp_path / "scores.csv"
    assert score.main([str(bundle), *map(str, images), "--out", str(out), "--top-k", "3", "--no-progress",
                       "--min-score", "0"]) == 0
    rows = {row["path"]: row for row in read_rows(out, 3)}
    for i, (path, result) in enumerate(zip(images, body["results"])):
        best = int(expected[i].argmax())
        assert result["predictions"][0]["index"] == best
        assert result["predictions"][0]["score"] == pytest.approx(expected[i, best], abs=1e-5)
        row = rows[str(path)]
        assert row["score_1"] == pytest.approx(result["predictions"][0]["score"], abs=1e-6)
        assert row["uncalibrated_score_1"] == pytest.approx(plain[i, best], abs=1e-5)
        assert row["abstained"] is False
    assert not np.allclose(expected.max(1), plain.max(1), atol=1e-3)  # the temperature did change the scores


def test_v2_infer_applies_the_same_temperature(bundle, client, images):
    """The Open Inference Protocol route returns the calibrated probabilities /classify ranks by."""
    import tritonclient.http as triton

    expected = softmax(raw_logits(bundle, images) / TEMPERATURE)
    name = client.get("/model").json()["name"]
    with triton.InferenceServerClient(str(client.base_url).split("://", 1)[1].rstrip("/")) as oip:
        tensor = triton.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array([p.read_bytes() for p in images], dtype=object), binary_data=True)
        probabilities = oip.infer(name, [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert not np.allclose(probabilities, softmax(raw_logits(bundle, images)), atol=1e-3)


def test_classify_abstains_below_min_score(client, images):
    data = images[0].read_bytes()
    default = client.post("/classify", content=data, headers={"Content-Type": "image/png"}).json()
    top = default["results"][0]["predictions"][0]["score"]
    assert default["min_score"] == CARD_MIN_SCORE
    assert default["results"][0]["abstained"] is (top < CARD_MIN_SCORE)
    above = min(1.0, top + 0.01)
    strict = client.post("/classify", content=data, headers={"Content-Type": "image/png"},
                         params={"min_score": str(above)}).json()
    assert strict["min_score"] == pytest.approx(above) and strict["results"][0]["abstained"] is True
    assert strict["results"][0]["predictions"][0]["label"] == default["results"][0]["predictions"][0]["label"]
    import base64

    loose = client.post("/classify", json={"images": [base64.b64encode(data).decode()], "min_score": 0}).json()
    assert loose["results"][0]["abstained"] is False and "min_score" not in loose  # 0: never abstain
    summary = client.get("/model").json()
    assert summary["calibration"]["temperature"] == TEMPERATURE and summary["calibration"]["min_score"] == CARD_MIN_SCORE
    metrics = client.get("/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("imgcls_abstained_total")]
    assert counted and float(counted[0].split()[-1]) >= 1.0


@pytest.mark.parametrize("params, kwargs", [
    ({"min_score": "1.5"}, {}), ({"min_score": "high"}, {}), ({}, {"json_min": "0.5"}), ({}, {"json_min": True}),
])
def test_bad_min_score_is_a_400_with_a_reason(client, images, params, kwargs):
    import base64

    data = images[0].read_bytes()
    if kwargs:
        response = client.post("/classify", json={"images": [base64.b64encode(data).decode()],
                                                  "min_score": kwargs["json_min"]})
    else:
        response = client.post("/classify", content=data, headers={"Content-Type": "image/png"}, params=params)
    assert response.status_code == 400
    assert response.json()["error"]["reason"] == "bad_min_score"


def test_score_labels_report_calibration_and_abstention(bundle, tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", ("cat", "dog", "owl"), 6, size=(48, 40), seed=3)
    out = tmp_path / "scores.jsonl"
    assert score.main([str(bundle), str(data), "--out", str(out), "--labels", "imagefolder", "--no-progress",
                       "--min-score", "0.5"]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out, 3)
    abstained = sum(row["abstained"] for row in rows)
    assert all(row["abstained"] == (row["score_1"] < 0.5) for row in rows)
    report = json.loads((tmp_path / "scores.eval.json").read_text())
    assert report["temperature"] == TEMPERATURE
    assert report["expected_calibration_error"] >= 0 and report["expected_calibration_error_uncalibrated"] >= 0
    assert report["expected_calibration_error"] != report["expected_calibration_error_uncalibrated"]
    assert report["abstention"]["abstained"] == abstained
    assert report["abstention"]["coverage"] == pytest.approx(1 - abstained / len(rows))
    assert [p["min_score"] for p in report["coverage_curve"]][:2] == [0.0, 0.05]
    assert "uncalibrated" in printed and "coverage" in printed
    for name in ("scores.reliability.png", "scores.coverage.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"


def test_a_card_json_whose_temperature_was_edited_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    card = ModelCard.load(copy)
    card.updated(calibration={"temperature": 1.0}).save(copy)
    with pytest.raises(BundleError, match="temperature"):
        Predictor.load(copy, threads=1)
    card.updated(calibration={"min_score": 0.9}).save(copy)  # the threshold alone may be edited
    with Predictor.load(copy, threads=1) as predictor:
        assert predictor.min_score == 0.9


def test_a_bundle_exported_without_calibration_serves_plain_softmax(tmp_path, images):
    """Older bundles (no calibration in the card or the graph) load with T = 1 and never abstain."""
    from tests.factories import make_tiny_bundle

    old = make_tiny_bundle(tmp_path)
    assert "calibration" not in json.loads((old / "card.json").read_text())
    with Predictor.load(old, threads=1) as predictor:
        assert predictor.temperature == 1.0 and predictor.min_score is None
        pixels = np.stack([predictor.decode(p) for p in images])
        np.testing.assert_allclose(predictor.infer(pixels), softmax(raw_logits(old, images)), atol=1e-6)


def test_export_refuses_a_min_score_outside_0_1(tmp_path, capsys):
    from imgcls.export import cli as export_cli

    assert export_cli.main([str(tmp_path), "--min-score", "1.5", "--out", str(tmp_path / "b")]) == 2
    assert "min_score" in capsys.readouterr().err
