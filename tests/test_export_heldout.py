"""No figure is graded on images the model was fitted on.

Every INT8 rung fits on images the gate never grades on (read back from the card's image-set
hashes), the head rung is skipped when too few images are left to fit on, stock bundles
(``--pretrained``) are split by photo, and export's log is lines (no ``\\r``, no third-party INFO).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.export.bundle import export_bundle
from imgcls.export.cli import EXIT_REFUSED, main
from imgcls.export.config import ExportConfig
from imgcls.export.head_refit import MIN_FIT_IMAGES
from imgcls.export.images import images_sha256
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing
from tests.factories import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "owl", "fox")
torch.set_num_threads(1)


def _paths(samples) -> list[str]:
    return [s.path for s in samples]


@pytest.fixture(scope="module")
def overlapping_run(tmp_path_factory):
    """A fitted tiny run whose split.json also lists every validation image as a training image (what
    a stock bundle's listing did): 120 genuine training images, 40 validation images."""
    run = make_tiny_run(tmp_path_factory.mktemp("heldout"), classes=CLASSES, per_class=40, train_steps=40)
    split = SplitListing.load(run)
    assert len(split.train) >= MIN_FIT_IMAGES and set(_paths(split.train)).isdisjoint(_paths(split.val))
    SplitListing(split.root, split.class_names, split.train + split.val, split.val, split.method, split.seed,
                 split.val_fraction).save(run)
    return run, split


def test_every_rung_fits_on_images_the_gate_never_grades(overlapping_run, tmp_path, caplog):
    run, split = overlapping_run
    # target x86: the accurate format's rungs only (VNNI adds its fast ones first; they fit the same way)
    config = ExportConfig(int8=True, max_accuracy_drop=-1.0, qat=True, qat_epochs=1, max_fp32_nodes=1,
                          mixed_size_budget=1.0, sensitivity_images=10**6, edge=False, progress=False,
                          int8_target="x86", calibration_size=1000)
    with caplog.at_level(logging.WARNING, logger="imgcls.export"):
        card = export_bundle(run, tmp_path / "bundle", config)
    assert "40 of the 160 training images are also validation images" in caplog.text
    int8 = card.export["int8"]
    assert [a["method"] for a in int8["attempts"]] == ["ptq", "ptq + retrained head", "mixed (1 nodes fp32)",
                                                       "qat (1 epochs)"]
    fit, gate = images_sha256(_paths(split.train)), images_sha256(_paths(split.val))
    assert fit != gate
    for attempt in int8["attempts"]:  # every gate grades on the validation images only
        assert attempt["gate"]["images_sha256"] == gate and attempt["gate"]["images"] == len(split.val)
    # ... and everything fitted saw exactly the genuine training images, none of the gate's
    assert int8["calibration_images_sha256"] == fit and int8["calibration_images"] == len(split.train)
    head = int8["attempts"][1]["head_refit"]
    assert head["images_sha256"] == fit and head["images"] == len(split.train)
    assert int8["attempts"][2]["sensitivity"]["images_sha256"] == fit
    qat = int8["attempts"][3]["qat"]
    assert qat["train_images_sha256"] == fit and qat["train_images"] == len(split.train)


def test_too_few_images_skip_the_head_rung_and_say_why(tmp_path, caplog, capsys):
    run = make_tiny_run(tmp_path, classes=CLASSES, per_class=12, train_steps=40)  # 36 training images
    out = tmp_path / "bundle"
    with caplog.at_level(logging.WARNING, logger="imgcls.export"):
        code = main([str(run), "--out", str(out), "--int8", "--no-progress", "--max-accuracy-drop", "-1",
                     "--no-mixed-precision", "--no-edge", "--int8-target", "x86"])
    assert code == EXIT_REFUSED
    int8 = ModelCard.load(out).export["int8"]
    assert [a["method"] for a in int8["attempts"]] == ["ptq"]
    (skipped,) = int8["skipped"]
    assert skipped["method"] == "ptq + retrained head"
    assert "only 36 images" in skipped["reason"] and f"at least {MIN_FIT_IMAGES}" in skipped["reason"]
    assert f"skipped: only 36 images" in caplog.text  # in the log, at warning level
    assert "skipped" in capsys.readouterr().out  # and in the summary table


def test_a_split_that_is_not_the_runs_own_is_not_gated_on(tmp_path, capsys):
    """Without split.json, a split made from --data may put the run's training images in its
    validation half: --int8/--fp16 are refused (exit 2); plain fp32 export (parity only) goes on."""
    run = make_tiny_run(tmp_path, classes=CLASSES, per_class=8)
    data = Path(SplitListing.load(run).root)
    (run / "split.json").unlink()
    assert main([str(run), "--out", str(tmp_path / "int8"), "--int8", "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "could grade on training images" in err and err.count("\n") == 1
    assert not (tmp_path / "int8").exists()
    assert main([str(run), "--out", str(tmp_path / "fp32"), "--data", str(data), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("lines"), classes=CLASSES, per_class=12, train_steps=40)


def test_export_log_is_lines_without_third_party_info(small_run, tmp_path):
    """stderr to a file (not a terminal): progress as log lines, no bar fragments, ORT's tools quiet."""
    log_file = tmp_path / "export.log"
    env = dict(os.environ, IMGCLS_PROGRESS_INTERVAL_S="0", OMP_NUM_THREADS="1")
    with log_file.open("w") as err:
        done = subprocess.run([sys.executable, "-m", "imgcls", "export", str(small_run), "--out", str(tmp_path / "b"),
                               "--int8"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=300)
    text = log_file.read_text()
    assert done.returncode == 0, text
    assert (tmp_path / "b" / "edge" / "model.int8.ort").is_file(), "the ORT converter ran"
    assert "\r" not in text and "ort_format_model" not in text, text
    lines = text.splitlines()
    assert any(line.startswith("INFO imgcls.progress: int8: calibrate: ") for line in lines), text
    assert any(line.startswith("INFO imgcls.progress: export: write done") for line in lines), text
    assert all(line.split(" ", 1)[0] in ("INFO", "WARNING") for line in lines), text
    fp32_row = next(line for line in done.stdout.splitlines() if line.strip().startswith("model.onnx"))
    assert fp32_row.split()[3] != "-", "the table shows fp32's own top-1"
    assert "than fp32" in done.stdout or "same top-1 as fp32" in done.stdout


def test_gate_figures_say_which_precision_is_better():
    from imgcls.export.int8_search import versus_fp32

    assert versus_fp32({"accuracy_drop_points": -1.39}, "int8") == "INT8 1.39 points better than fp32"
    assert versus_fp32({"accuracy_drop_points": 0.5}, "int8") == "INT8 0.50 points worse than fp32"
    assert versus_fp32({"accuracy_drop_points": 0.0}, "int8") == "same top-1 as fp32"


def test_a_temperature_at_its_search_bound_is_a_warning(caplog):
    from imgcls.models.core.calibration import MAX_TEMPERATURE, fit_calibration

    logits = np.random.default_rng(0).normal(size=(64, 5)) * 10
    wrong = (logits.argmax(1) + 1) % 5
    with caplog.at_level(logging.WARNING, logger="imgcls.models.core.calibration"):
        section = fit_calibration(logits, wrong, "test images")
    assert section["hit_search_bound"] == MAX_TEMPERATURE
    assert "hit its search bound" in caplog.text and "mostly wrong" in caplog.text
    caplog.clear()
    right = fit_calibration(logits + np.random.default_rng(1).normal(size=logits.shape) * 8, logits.argmax(1), "x")
    assert "hit_search_bound" not in right and "search bound" not in caplog.text


@pytest.mark.slow
def test_stock_bundle_gates_on_photos_nothing_was_fitted_on(tmp_path, caplog):
    """--pretrained: fitting on one half of the reference photos, the gate on the other (by photo, so
    no crop or flip of a graded photo is fitted on); too few for the head rung, which says so."""
    from imgcls.export.pretrained import FIT_PHOTOS, GATE_PHOTOS, VARIANTS

    out = tmp_path / "lite0"
    with caplog.at_level(logging.WARNING, logger="imgcls.export"):
        code = main(["--pretrained", "efficientnet_lite0", "--out", str(out), "--int8", "--no-progress",
                     "--no-edge", "--parity-images", "4", "--max-fp32-nodes", "1"])
    card = ModelCard.load(out)
    int8 = card.export["int8"]
    assert code == (0 if int8["status"] == "passed" else EXIT_REFUSED)
    assert set(card.train["fit_photos"]) == set(FIT_PHOTOS) and set(card.train["gate_photos"]) == set(GATE_PHOTOS)
    assert set(FIT_PHOTOS).isdisjoint(GATE_PHOTOS) and len(FIT_PHOTOS) + len(GATE_PHOTOS) == 18
    fit = [f"{photo}_{kind}.png" for photo in FIT_PHOTOS for kind in VARIANTS]
    gate = [f"{photo}_{kind}.png" for photo in GATE_PHOTOS for kind in VARIANTS]
    for attempt in int8["attempts"]:
        assert attempt["gate"]["images_sha256"] == images_sha256(gate) and attempt["gate"]["images"] == len(gate)
    assert int8["calibration_images_sha256"] == images_sha256(fit) and int8["calibration_images"] == len(fit)
    ranked = [a["sensitivity"] for a in int8["attempts"] if "sensitivity" in a]
    assert ranked and all(r["images_sha256"] == images_sha256(fit[:r["images"]]) for r in ranked)
    skipped = int8["skipped"]  # the head rung of each format tried (VNNI: U8S8, then U8U8)
    assert skipped and all(s["method"].startswith("ptq + retrained head") and f"only {len(fit)} images" in s["reason"]
                           for s in skipped)
    assert "ptq + retrained head: skipped" in caplog.text
    assert "temperature" not in card.calibration  # no labels: the stock bundle's scores are uncalibrated
