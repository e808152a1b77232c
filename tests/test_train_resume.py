"""SIGKILL in the middle of an epoch, then ``--resume``: the same final weights as never stopping."""
from __future__ import annotations

import json
import signal

import torch

from imgcls.digits import write_digits
from imgcls.models.training.cli import main
from tests.train_helpers import TINY_FINETUNE, run_cli, weights_of

ARGS = [*TINY_FINETUNE, "--augment", "--min-crop-scale", "0.6", "--hflip", "--epochs", "3", "--patience", "0", "--warmup-epochs", "0.5", "--seed", "7"]


def _epochs(run):
    drop = ("train_seconds", "train_images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_digits(data, limit_per_class=12)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    torch.set_num_threads(1)
    assert main(["--data", str(data), "--out", str(whole), *ARGS]) == 0  # in process: one start-up less

    # Killed after batch 2 of epoch 2: epoch 1's state is on disk, epoch 2 is half done.
    crash = run_cli(["--data", str(data), "--out", str(killed), *ARGS], IMGCLS_TEST_SIGKILL_AT="2:2")
    assert crash.returncode == -signal.SIGKILL
    state = torch.load(killed / "train_state.pt", weights_only=True)
    assert state["progress"]["completed_epochs"] == 1

    resumed = run_cli(["--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 of 3" in resumed.stderr

    final_whole = torch.load(whole / "train_state.pt", weights_only=True)
    final_resumed = torch.load(killed / "train_state.pt", weights_only=True)
    assert final_resumed["progress"]["completed_epochs"] == 3
    for key, tensor in final_whole["model"].items():
        assert torch.equal(tensor, final_resumed["model"][key]), key
    best_whole, best_resumed = weights_of(whole), weights_of(killed)
    assert all(torch.equal(best_whole[k], best_resumed[k]) for k in best_whole)
    assert _epochs(whole) == _epochs(killed)
    assert [p.name for p in killed.iterdir() if p.name.startswith(".")] == [".imgcls.json"]  # no temp files left
