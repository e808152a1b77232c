"""``imgcls score --split``: a run's split found through the bundle's lineage; a warning when training
images are scored; labels that match no class are named. Real tiny bundle, real CLI."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.factories import make_tiny_bundle
from imgcls.models.core.dataset import SplitListing
from imgcls.service.scoring import cli as score
from imgcls.service.scoring.outputs import read_rows

TRAINED_WARNING = "scored images were used to train this model: metrics over them are optimistic; use --split val"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("split"), train_steps=20)


@pytest.fixture(scope="module")
def split(bundle):
    return SplitListing.load(bundle.parents[1] / "runs" / "tiny")


def run_score(*args) -> int:
    return score.main([*map(str, args), "--no-progress"])


def test_split_val_scores_exactly_the_validation_images_and_evaluates_them(bundle, split, tmp_path, caplog):
    out = tmp_path / "val.csv"
    assert run_score(bundle, "--split", "val", "--out", out) == score.EXIT_OK
    assert sorted(row["path"] for row in read_rows(out, 3)) == sorted(str(split.absolute(s)) for s in split.val)
    report = json.loads((tmp_path / "val.eval.json").read_text())  # labelled by the split itself
    assert report["count"] == len(split.val) == 6 and report["training_images_scored"] == 0
    assert TRAINED_WARNING not in caplog.text


def test_scoring_training_images_warns_with_the_count(bundle, split, tmp_path, caplog):
    data = bundle.parents[1] / "data"
    out = tmp_path / "all.csv"
    assert run_score(bundle, data, "--labels", "imagefolder", "--out", out) == score.EXIT_OK
    assert f"{len(split.train)} of 24 {TRAINED_WARNING}" in caplog.text and len(split.train) == 18
    assert json.loads((tmp_path / "all.eval.json").read_text())["training_images_scored"] == 18
    caplog.clear()
    assert run_score(bundle, "--split", "train", "--out", tmp_path / "train.csv") == score.EXIT_OK
    assert f"18 of 18 {TRAINED_WARNING}" in caplog.text


def test_a_split_that_cannot_be_found_names_where_it_looked_and_split_file_works(bundle, tmp_path, caplog):
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    report = json.loads((moved / "export_report.json").read_text())
    report["run"] = str(tmp_path / "gone" / "run")
    (moved / "export_report.json").write_text(json.dumps(report))
    assert run_score(moved, "--split", "val", "--out", tmp_path / "a.csv") == score.EXIT_ERROR
    assert f"{tmp_path / 'gone' / 'run' / 'split.json'} (from {moved / 'export_report.json'} 'run'): missing" \
        in caplog.text and "--split-file" in caplog.text
    assert not (tmp_path / "a.csv").exists()

    run_dir = bundle.parents[1] / "runs" / "tiny"
    caplog.clear()
    assert run_score(moved, "--split-file", run_dir / "split.json", "--split", "all", "--out", tmp_path / "b.csv") == 0
    assert len(read_rows(tmp_path / "b.csv", 3)) == 24
    assert f"18 of 24 {TRAINED_WARNING}" in caplog.text  # the given split hashes to the card's lineage

    with pytest.raises(SystemExit) as usage:
        run_score(bundle, bundle.parents[1] / "data", "--split", "val", "--out", tmp_path / "c.csv")
    assert usage.value.code == 2


def test_labels_that_match_no_class_are_named(bundle, tmp_path, caplog, capsys):
    data = bundle.parents[1] / "data"
    wrong = tmp_path / "wrong"
    shutil.copytree(data / "cat", wrong / "kitten")
    shutil.copytree(data / "dog", wrong / "puppy")
    assert run_score(bundle, wrong, "--labels", "imagefolder", "--out", tmp_path / "a.csv") == score.EXIT_OK
    printed = capsys.readouterr().out
    assert "'kitten' (8), 'puppy' (8)" in printed and "the model's classes: cat, dog, owl" in printed

    shutil.copytree(data / "owl", wrong / "owl")
    caplog.clear()
    assert run_score(bundle, wrong, "--labels", "imagefolder", "--out", tmp_path / "b.csv") == score.EXIT_OK
    assert "16 image(s) have labels that are not classes of this model, left out: 'kitten' (8), 'puppy' (8)" \
        in caplog.text
    assert json.loads((tmp_path / "b.eval.json").read_text())["count"] == 8
