"""What a user sees from `imgcls train`: progress in a log (images/s, ETA, no bar fragments) and
every training image used in every epoch."""
from __future__ import annotations

import json

import pytest

from imgcls.digits import write_digits
from tests.train_helpers import TINY_FINETUNE, run_cli


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "data"
    write_digits(root, limit_per_class=10)  # 100 images: 80 train / 20 val
    return root


def _first_epoch(run) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.slow
def test_logged_progress_for_every_epoch_and_every_image_used(digits, tmp_path):
    out = tmp_path / "gradual"
    result = run_cli(["--data", str(digits), "--out", str(out), *TINY_FINETUNE, "--strategy", "gradual",
                      "--unfreeze-epoch", "0", "--epochs", "1", "--batch-size", "24"], IMGCLS_PROGRESS_INTERVAL_S="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _first_epoch(out)["train_images"] == 80  # 24+24+24+8: the partial batch trains too (was 72)
    log = result.stderr
    assert "\r" not in log  # not a terminal: no progress-bar fragments in the log
    assert "checking images: 100 images in" in log
    epoch_lines = [line for line in log.splitlines() if "epoch 1/1: " in line and "img/s" in line]
    assert any("/80 images (" in line and "ETA" in line for line in epoch_lines), log[-3000:]
    assert any("validating: " in line for line in log.splitlines()), log[-3000:]


@pytest.mark.slow
def test_feature_caching_shows_progress_and_a_lone_image_is_said(digits, tmp_path):
    out = tmp_path / "head"
    result = run_cli(["--data", str(digits), "--out", str(out), "--arch", "tiny", "--weights", "none",
                      "--strategy", "head", "--epochs", "1", "--loader-workers", "0", "--threads", "1",
                      "--batch-size", "16"], IMGCLS_PROGRESS_INTERVAL_S="0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert any("caching train features: " in line and "/80 images (" in line and "ETA" in line for line in lines)
    assert any("caching val features: 20 images in" in line for line in lines)
    lone = tmp_path / "lone"
    result = run_cli(["--data", str(digits), "--out", str(lone), *TINY_FINETUNE, "--epochs", "1",
                      "--batch-size", "79"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _first_epoch(lone)["train_images"] == 79 and "1 image sits out each epoch" in result.stderr
