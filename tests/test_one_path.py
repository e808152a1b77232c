"""One inference path: ``POST /classify``, ``imgcls score`` and export validation decode through the
same code and give bit-identical probabilities for the same files (each at batch size 1, where no
batching difference can hide a divergence)."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from imgcls.export.validate import run_batches, session
from imgcls.models.core.card import ModelCard
from imgcls.service.host.launcher import child_environment, start_server
from imgcls.service.predictor import softmax
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow
FILES = {"wide.jpg": (make_image(97, 41, seed=1), "JPEG"), "tall.png": (make_image(30, 88, seed=2), "PNG"),
         "gray.png": (make_image(64, 64, "L", seed=3), "PNG"), "rgba.png": (make_image(50, 40, "RGBA", seed=4), "PNG")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-path")
    bundle = make_tiny_bundle(root)
    folder = root / "images"
    folder.mkdir()
    for name, (image, fmt) in FILES.items():
        (folder / name).write_bytes(encode(image, fmt))
    return bundle, folder


def by_index(predictions: list[dict], classes: int) -> np.ndarray:
    row = np.full(classes, np.nan, dtype=np.float64)
    for p in predictions:
        row[p["index"]] = p["score"]
    return row


def test_http_scoring_and_export_validation_agree_bit_for_bit(setup, tmp_path):
    bundle, folder = setup
    card = ModelCard.load(bundle / "card.json")
    classes, preprocess = card.num_classes, card.preprocess
    ort_session = session(bundle / "model.onnx")
    validation = {name: softmax(run_batches(ort_session, preprocess.pixels(preprocess.load(folder / name))[None], 1))[0]
                  for name in FILES}

    out = tmp_path / "scores.jsonl"
    subprocess.run([sys.executable, "-m", "imgcls", "score", str(bundle), str(folder), "--out", str(out),
                    "--top-k", str(classes), "--batch-size", "1"], check=True, env=child_environment(), timeout=120)
    scored = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        name = row["path"].rsplit("/", 1)[-1]
        scored[name] = by_index([{"index": card.class_names.index(row[f"label_{j}"]), "score": row[f"score_{j}"]}
                                 for j in range(1, classes + 1)], classes)

    served = {}
    with start_server(bundle, tmp_path / "serve.log") as server:
        for name in FILES:
            response = httpx.post(f"{server.url}/classify", params={"top_k": classes}, timeout=30,
                                  files=[("images", (name, (folder / name).read_bytes(), "application/octet-stream"))])
            assert response.status_code == 200, response.text
            served[name] = by_index(response.json()["results"][0]["predictions"], classes)

    for name in FILES:
        assert not np.isnan(served[name]).any() and not np.isnan(scored[name]).any()
        assert served[name].tolist() == scored[name].tolist(), name
        assert scored[name].tolist() == validation[name].astype(np.float64).tolist(), name
