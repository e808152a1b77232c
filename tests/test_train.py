"""A short real fine-tuning run on a digits subset: it learns, and every artefact it writes holds up."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.models.training.checkpoint import load_checkpoint
from imgcls.models.core.dataset import SplitListing
from imgcls.digits import write_digits
from imgcls.models.training.cli import main
from tests.train_helpers import TINY_FINETUNE

EPOCHS = 12


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "data"
    write_digits(root, limit_per_class=24)
    return root


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["--data", str(digits), "--out", str(out), "--epochs", str(EPOCHS), "--patience", "0",
                 *TINY_FINETUNE]) == 0
    return out


def test_short_run_learns_well_above_chance(run):
    _, card = load_checkpoint(run)
    assert card.num_classes == 10
    assert card.metrics["val_accuracy"] >= 0.35, card.metrics  # chance is 0.1
    assert card.metrics["best_epoch"] >= 2


def test_checkpoint_round_trips_and_reproduces_its_metrics(run):
    model, card = load_checkpoint(run)
    split = SplitListing.load(run)
    assert card.lineage["dataset_sha256"] == split.sha256()
    assert card.class_names == split.class_names
    pixels = np.stack([card.preprocess(card.preprocess.load(split.absolute(s))) for s in split.val])
    with torch.no_grad():
        predicted = model(torch.from_numpy(pixels)).argmax(1)
    accuracy = float((predicted == torch.tensor([s.label for s in split.val])).float().mean())
    assert accuracy == pytest.approx(card.metrics["val_accuracy"], abs=1e-6)
    train = json.loads((run / "checkpoint" / "card.json").read_text())["train"]
    assert train["strategy"] == "finetune" and train["epochs"] == EPOCHS and train["world_size"] == 1
    assert set(card.metrics["per_class"]["3"]) == {"precision", "recall", "support"}


def test_metrics_plots_and_resume_state_are_written(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(records[0])
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for name in ("curves.png", "confusion.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    report = json.loads((run / "val_report.json").read_text())
    assert sum(map(sum, report["confusion"])) == report["val_images"] == len(SplitListing.load(run).val)
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["progress"]["completed_epochs"] == EPOCHS


def test_finetune_trains_backbone_at_the_lower_rate(run):
    state = torch.load(run / "train_state.pt", weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert set(groups) == {"head", "backbone"}
    assert groups["head"]["initial_lr"] == pytest.approx(0.05)
    assert groups["backbone"]["initial_lr"] == pytest.approx(0.05 * 0.1)
    assert len(groups["head"]["params"]) == 2  # the new Linear's weight and bias
    assert len(groups["backbone"]["params"]) == 6  # two convs, two BatchNorms (weight, bias)


def test_temperature_is_fitted_on_the_best_epoch_and_recorded(run):
    """The checkpoint's card carries the temperature fitted on the validation logits of its own epoch:
    recomputing those logits reproduces the recorded NLL before and after, and the fit lowered it."""
    from imgcls.models.core.calibration import fit_temperature, negative_log_likelihood

    model, card = load_checkpoint(run)
    fitted = card.calibration
    assert set(fitted) >= {"temperature", "method", "fitted_on", "images", "ece_before", "ece_after",
                           "nll_before", "nll_after"}
    split = SplitListing.load(run)
    assert fitted["images"] == len(split.val) and "validation" in fitted["fitted_on"]
    pixels = np.stack([card.preprocess(card.preprocess.load(split.absolute(s))) for s in split.val])
    labels = np.array([s.label for s in split.val])
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels)).numpy().astype(np.float64)
    assert fit_temperature(logits, labels) == pytest.approx(card.temperature, rel=1e-3)
    assert negative_log_likelihood(logits, labels) == pytest.approx(fitted["nll_before"], abs=1e-4)
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-9
    report = json.loads((run / "val_report.json").read_text())
    assert report["calibration"] == fitted and report["reliability"]["after"]
    with Image.open(run / "reliability.png") as image:
        assert image.format == "PNG" and min(image.size) > 200
