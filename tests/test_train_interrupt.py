"""Ctrl-C (SIGINT) at any point of ``imgcls train``: the printed next step works.

Each test starts the real CLI in its own session, waits for a phase's own progress line on stderr,
sends SIGINT to the whole process group (as Ctrl-C on a terminal does, data-loading workers
included), runs the command the interrupted run printed, and checks that it completes. Interrupted while caching
backbone features, the resumed run reuses the pieces already on disk and ends with the same weights
as a run that was never interrupted.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from imgcls.digits import write_digits
from tests.train_helpers import cli_env, weights_of
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

# A real backbone (random init, offline) is slow enough on CPU (~150 images/s on one thread) that
# caching 400 images takes seconds; batches of 8 make pieces of 32 images; one loader worker, as
# by default on two cores.
HEAD = ["--arch", "mobilenet_v3_small", "--weights", "none", "--strategy", "head", "--epochs", "2",
        "--batch-size", "8", "--loader-workers", "1", "--threads", "1", "--no-augment", "--patience", "0"]
STEP = re.compile(r"interrupted; (?:continue with|nothing to resume yet; start again with): (.+)$", re.M)


def _imgcls(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "imgcls", *args]


def interrupt_at(args: list[str], phase: re.Pattern[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``imgcls ARGS``, send SIGINT when a stderr line matches ``phase``; (exit status, stderr)."""
    process = subprocess.Popen(_imgcls(args), cwd=REPO_ROOT, env=cli_env(IMGCLS_PROGRESS_INTERVAL_S="0"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    sent: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if not sent and phase.search(line) and process.poll() is None:
                sent.append(line)  # one Ctrl-C: a second one could land in the handler reporting the first
                os.killpg(process.pid, signal.SIGINT)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    status = process.wait(timeout=timeout)
    reader.join(timeout=10)
    return status, "".join(lines)


def run_printed_step(stderr: str) -> subprocess.CompletedProcess:
    found = STEP.search(stderr)
    assert found, stderr[-2000:]
    words = shlex.split(found.group(1))
    assert words[:2] == ["imgcls", "train"], words
    return subprocess.run(_imgcls(words[1:]), cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def _complete(run: Path, epochs: int = 2) -> dict:
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["progress"]["completed_epochs"] == epochs
    assert (run / "checkpoint" / "weights.safetensors").is_file()
    return state


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("interrupt") / "data"
    write_digits(data, limit_per_class=40)
    return data


@pytest.fixture(scope="module")
def all_digits(tmp_path_factory) -> Path:
    """1,797 images: checking them takes long enough (~0.5 s) to be interrupted reliably."""
    data = tmp_path_factory.mktemp("interrupt") / "all"
    write_digits(data)
    return data


def test_interrupted_while_caching_resumes_with_the_features_already_cached(digits, tmp_path):
    run, whole = tmp_path / "run", tmp_path / "whole"
    # SIGINT once two pieces (64 images) of the training features are done and on disk.
    status, stderr = interrupt_at(["train", "--data", str(digits), "--out", str(run), *HEAD],
                                  re.compile(r"caching train features: (6[4-9]|[7-9]\d|[1-9]\d\d)/"))
    assert status == 130, stderr[-2000:]
    assert f"continue with: imgcls train --resume {run}" in stderr
    pieces = sorted((run / "feature_cache").glob("train-*.safetensors"))
    assert pieces and not list((run / "feature_cache").glob("val-*")), "interrupted after caching finished"

    resumed = run_printed_step(stderr)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "before its first epoch" in resumed.stderr
    reused = re.search(r"caching train features: (\d+) of (\d+) images' features reused", resumed.stderr)
    assert reused and 0 < int(reused.group(1)) < int(reused.group(2)), resumed.stderr[-2000:]
    assert int(reused.group(1)) == 32 * len(pieces)
    state = _complete(run)

    # The same numbers as never stopping: reused features are those an uninterrupted run computes.
    straight = subprocess.run(_imgcls(["train", "--data", str(digits), "--out", str(whole), *HEAD]), cwd=REPO_ROOT,
                              env=cli_env(), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = _complete(whole)
    for key, tensor in reference["model"].items():
        assert torch.equal(tensor, state["model"][key]), key
    best, best_resumed = weights_of(whole), weights_of(run)
    assert all(torch.equal(best[k], best_resumed[k]) for k in best)


def test_interrupted_while_checking_images_starts_again(all_digits, tmp_path):
    run = tmp_path / "run"
    tiny = ["--arch", "tiny", "--weights", "none", "--epochs", "2", "--loader-workers", "1", "--threads", "1"]
    status, stderr = interrupt_at(["train", "--data", str(all_digits), "--out", str(run), *tiny],
                                  re.compile(r"checking images: \d+/"))
    assert status == 130, stderr[-2000:]
    assert "nothing to resume yet; start again with: imgcls train --data" in stderr
    again = run_printed_step(stderr)
    assert again.returncode == 0, again.stderr[-2000:]
    _complete(run)


def test_interrupted_in_an_epoch_resumes_after_the_last_one_completed(digits, tmp_path):
    run = tmp_path / "run"
    status, stderr = interrupt_at(["train", "--data", str(digits), "--out", str(run), *HEAD, "--no-cached-features"],
                                  re.compile(r"epoch 2/2: \d+/"))
    assert status == 130, stderr[-2000:]
    assert f"continue with: imgcls train --resume {run}" in stderr
    resumed = run_printed_step(stderr)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 1 of 2" in resumed.stderr
    _complete(run)


def test_interrupted_while_plotting_the_printed_resume_writes_the_plots(digits, tmp_path):
    run = tmp_path / "run"
    tiny = ["--arch", "tiny", "--weights", "none", "--epochs", "2", "--loader-workers", "0", "--threads", "1"]
    # The summary line of the last epoch is logged after its state is saved; plotting follows.
    status, stderr = interrupt_at(["train", "--data", str(digits), "--out", str(run), *tiny],
                                  re.compile(r"epoch 2/2  train loss"))
    assert status == 130, stderr[-2000:]
    missing = [name for name in ("curves.png", "confusion.png", "reliability.png") if not (run / name).is_file()]
    assert missing, "interrupted after plotting"
    resumed = run_printed_step(stderr)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "is already complete" in resumed.stderr
    assert all((run / name).is_file() for name in missing), resumed.stderr[-2000:]
