"""``imgcls score`` end to end on a real tiny bundle: bad files, resume after SIGKILL, evaluation,
shards, and the same top-k as the predictor and the export validator's preprocessing path."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_image_folder, make_tiny_bundle
from imgcls.service.scoring import cli as score
from imgcls.service.predictor import Predictor, softmax
from imgcls.service.scoring.outputs import read_rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("score"), train_steps=20)


@pytest.fixture(scope="module")
def data(bundle):
    return bundle.parents[1] / "data"


def run_score(*args: str) -> int:
    return score.main([*map(str, args), "--no-progress"])


def test_bad_files_become_rows_with_reasons_and_exit_3(bundle, data, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(data, folder)
    jpeg = encode(make_image(120, 90), "JPEG", quality=90)
    bad = {
        "cat/corrupt.jpg": (jpeg[:200] + b"\0" * (len(jpeg) - 200), "corrupt"),
        "cat/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "dog/notes.jpg": (b"these are notes, not pixels", "not_an_image"),
        "owl/zero.png": (b"", "empty"),
    }
    for name, (payload, _) in bad.items():
        (folder / name).write_bytes(payload)
    out = tmp_path / "scores.csv"
    assert run_score(bundle, folder, "--out", out, "--top-k", "2", "--batch-size", "5") == score.EXIT_PARTIAL
    rows = {row["path"]: row for row in read_rows(out, 2)}
    good = sorted(p for p in map(str, folder.rglob("*_*.*")))
    assert len(rows) == len(good) + len(bad)
    for path in good:
        assert rows[path]["error"] is None and rows[path]["label_1"] in ("cat", "dog", "owl")
        assert rows[path]["score_1"] >= rows[path]["score_2"]
    for name, (_, reason) in bad.items():
        row = rows[str(folder / name)]
        assert (row["error"], row["label_1"]) == (reason, None) and row["message"]
    summary = capsys.readouterr().out
    assert f"scored {len(good)}, failed {len(bad)}" in summary and "img/s" in summary


def test_resume_after_sigkill_scores_each_path_exactly_once(bundle, tmp_path):
    folder = make_image_folder(tmp_path / "many", per_class=300, size=(36, 36))
    expected = sorted(str(p) for p in folder.rglob("*.*"))
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "imgcls.cli", "score", str(bundle), str(folder), "--out", str(out),
               "--batch-size", "2", "--decode-threads", "1", "--threads", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") > 60:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    written = out.read_bytes()
    assert 60 < written.count(b"\n") < len(expected) + 1
    intact = written[: written.rfind(b"\n") + 1]

    resumed = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.read_bytes().startswith(intact)  # what was written before the kill is untouched
    counts = collections.Counter(row["path"] for row in read_rows(out, 3))
    assert sorted(counts) == expected and set(counts.values()) == {1}
    assert "skipped" in resumed.stdout


def test_same_top_k_through_predictor_score_and_export_validator(bundle, data, tmp_path):
    from imgcls.export.validate import session as validator_session  # the export validator's ORT session

    images = sorted(data.rglob("*.*"))
    out = tmp_path / "scores.jsonl"
    assert run_score(bundle, data, "--out", out, "--top-k", "3") == score.EXIT_OK
    scored = {row["path"]: row for row in read_rows(out, 3)}

    with Predictor.load(bundle, device="cpu") as predictor:
        predicted = predictor.predict(images, top_k=3)
        card = predictor.card
    reference = validator_session(bundle / "model.onnx")
    pixels = np.stack([card.preprocess.pixels(card.preprocess.load(path)) for path in images])
    (logits,) = reference.run(["logits"], {"pixels": pixels})
    for path, result, probabilities in zip(images, predicted, softmax(logits)):
        order = np.argsort(-probabilities, kind="stable")
        expected = [card.class_names[i] for i in order]
        assert [p.label for p in result] == expected
        assert [scored[str(path)][f"label_{j}"] for j in (1, 2, 3)] == expected
        assert [p.score for p in result] == pytest.approx(probabilities[order].tolist(), abs=1e-6)
        assert [scored[str(path)][f"score_{j}"] for j in (1, 2, 3)] == pytest.approx(probabilities[order].tolist(), abs=1e-6)


def test_labels_imagefolder_writes_an_evaluation(bundle, data, tmp_path, capsys):
    out = tmp_path / "val.csv"
    assert run_score(bundle, data, "--out", out, "--labels", "imagefolder") == score.EXIT_OK
    rows = read_rows(out, 3)
    report = json.loads((tmp_path / "val.eval.json").read_text())
    truth = [os.path.basename(os.path.dirname(row["path"])) for row in rows]
    accuracy = np.mean([row["label_1"] == label for row, label in zip(rows, truth)])
    assert report["count"] == len(rows) == 24
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["top5_accuracy"] == 1.0  # all 3 classes ranked
    assert sum(report["per_class"][name]["support"] for name in ("cat", "dog", "owl")) == 24
    assert (tmp_path / "val.confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy" in capsys.readouterr().out


def test_labels_csv_and_shards_partition_the_inputs(bundle, data, tmp_path):
    images = sorted(data.rglob("*.*"))
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    parts = []
    for index, suffix in ((1, "jsonl"), (2, "parquet")):
        out = tmp_path / f"part{index}.{suffix}"
        assert run_score(bundle, listing, "--out", out, "--shard", f"{index}/2", "--labels", listing) == 0
        parts.append([row["path"] for row in read_rows(out, 3)])
        assert json.loads((tmp_path / f"part{index}.eval.json").read_text())["count"] == len(parts[-1])
    assert sorted(parts[0] + parts[1]) == sorted(map(str, images))
    assert not set(parts[0]) & set(parts[1])
    assert parts[0] == [str(p) for p in images[0::2]]


def test_usage_errors_exit_2(bundle, data, tmp_path, caplog):
    assert run_score(bundle, data, "--out", tmp_path / "a.csv", "--device", "cuda") == score.EXIT_ERROR
    assert "CUDAExecutionProvider" in caplog.text
    assert run_score(bundle, tmp_path / "nowhere", "--out", tmp_path / "b.csv") == score.EXIT_ERROR
    assert run_score(tmp_path, data, "--out", tmp_path / "c.csv") == score.EXIT_ERROR
    assert run_score(bundle, data, "--out", tmp_path / "d.txt") == score.EXIT_ERROR
    assert "does not exist" in caplog.text and "unknown format" in caplog.text
    assert not (tmp_path / "a.csv").exists()


def test_resume_with_another_bundle_is_refused_naming_both_models(bundle, data, tmp_path, caplog):
    out = tmp_path / "scores.csv"
    assert run_score(bundle, data, "--out", out) == score.EXIT_OK
    versions = {row["model_version"] for row in read_rows(out, 3)}
    assert len(versions) == 1 and versions.pop().startswith(f"{bundle.name}@")
    other = tmp_path / "other-model"
    shutil.copytree(bundle, other)
    before = out.read_bytes()
    assert run_score(other, data, "--out", out, "--resume") == score.EXIT_ERROR
    assert out.read_bytes() == before  # nothing appended by the other model
    assert f"'{bundle.name}@" in caplog.text and "'other-model@" in caplog.text


def test_missing_listed_file_is_not_found_and_a_run_is_not_a_bundle(bundle, data, tmp_path, caplog):
    image = sorted(data.rglob("*.png"))[0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "scores.jsonl"
    assert run_score(bundle, listing, "--out", out) == score.EXIT_PARTIAL
    rows = {row["path"]: row for row in read_rows(out, 3)}
    assert rows[str(tmp_path / "gone.png")]["error"] == "not_found" and rows[str(image)]["error"] is None
    run_dir = bundle.parents[1] / "runs" / "tiny"
    assert run_score(run_dir, data, "--out", tmp_path / "x.csv") == score.EXIT_ERROR
    assert f"export it first: imgcls export {run_dir}" in caplog.text


def test_progress_in_a_log_is_periodic_lines_not_bar_fragments(bundle, data, tmp_path):
    command = [sys.executable, "-m", "imgcls", "score", str(bundle), str(data), "--out", str(tmp_path / "s.csv"),
               "--batch-size", "4", "--decode-threads", "1", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "IMGCLS_PROGRESS_INTERVAL_S": "0"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr  # stderr is a pipe here, as in a log file: no bar
    lines = [line for line in result.stderr.splitlines() if "scoring: " in line]
    assert any("/24 images (" in line and "img/s" in line and "ETA" in line for line in lines), result.stderr[-2000:]
    assert lines[-1].split("scoring: ")[1].startswith("24 images in")
