"""One writer per output: ``imgcls score`` holds an exclusive lock on ``--out`` for its whole run.

Real ``imgcls score`` processes on a real input that is slow enough to overlap (large PNGs), a real
SIGKILL, and the lock module itself with real child processes.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.factories import class_image, make_tiny_bundle
from imgcls.models.core.output_lock import OutputLockedError, lock_path, output_lock
from imgcls.service.scoring.outputs import read_rows

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("lock"))


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory):
    """300 distinct paths of a 1600x1600 noisy PNG (hard links: one file on disk), ~40 ms to decode each."""
    folder = tmp_path_factory.mktemp("slow")
    first = folder / "cat" / "big_000.png"
    first.parent.mkdir()
    class_image(0, (1600, 1600), np.random.default_rng(0)).save(first, format="PNG")
    for i in range(1, 300):
        os.link(first, folder / "cat" / f"big_{i:03d}.png")
    return folder


def score_command(bundle: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgcls", "score", str(bundle), str(inputs), "--out", str(out),
            "--batch-size", "2", "--decode-threads", "1", "--threads", "1", "--no-progress", *extra]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def wait_for_rows(out: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``out`` holds a header and a first batch (the writer is under way) or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            return
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR")]


def test_second_writer_exits_2_naming_the_holder_and_a_killed_holders_lock_is_taken_over(bundle, slow_folder,
                                                                                          tmp_path):
    out = tmp_path / "scores.csv"
    first = subprocess.Popen(score_command(bundle, slow_folder, out), cwd=REPO_ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(out, first)
        assert first.poll() is None, "the first run ended before a second could overlap it"
        for mode in ("--resume", "--overwrite"):
            second = run(score_command(bundle, slow_folder, out, mode))
            assert second.returncode == 2, second.stderr[-2000:]
            assert first.poll() is None, "the first run ended while the second ran: the overlap was not tested"
            assert len(error_lines(second.stderr)) == 1
            assert f"pid {first.pid}" in second.stderr and str(out) in second.stderr
        assert lock_path(out).read_text().strip() == str(first.pid)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    assert lock_path(out).exists()  # a killed process cannot clean up: its lock file stays, unlocked

    resumed = run(score_command(bundle, slow_folder, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"taking over the lock of pid {first.pid}" in resumed.stderr
    counts = collections.Counter(row["path"] for row in read_rows(out, 3))
    assert sorted(counts) == sorted(str(p) for p in slow_folder.rglob("*.png")) and set(counts.values()) == {1}
    assert not lock_path(out).exists()  # a clean end removes the lock file


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_held_dataset_directory_or_file_is_refused_by_either_engine(bundle, tmp_path, engine):
    """The lock is taken before either engine reads or writes anything of --out."""
    pytest.importorskip("ray") if engine == "ray" else None
    data = bundle.parents[1] / "data"
    for out in (tmp_path / "dataset", tmp_path / "scores.jsonl"):
        if engine == "local" and out.suffix == "":
            continue  # a dataset directory is the Ray engine's output
        with output_lock(out):  # this test process is the holder
            result = run(score_command(bundle, data, out, "--engine", engine))
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"pid {os.getpid()}" in result.stderr and len(error_lines(result.stderr)) == 1
        assert not out.exists()  # nothing was created or written


HOLD = """
import sys, time
from imgcls.models.core.output_lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_module_stale_lock_takeover_strangers_file_and_cleanup(tmp_path, caplog):
    out = tmp_path / "made" / "by" / "us.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO_ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out) as lock:  # SIGKILL released the flock: the stale file is taken over
        assert lock.read_text().strip() == str(os.getpid())
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    assert not lock.exists()

    with output_lock(tmp_path / "new" / "deeper" / "x.csv"):
        assert (tmp_path / "new" / "deeper").is_dir()
    assert not (tmp_path / "new").exists()  # folders made only for the lock are removed again

    stranger = lock_path(tmp_path / "theirs.csv")
    stranger.write_text("not a pid: somebody's notes\n")
    with pytest.raises(OutputLockedError, match="not an imgcls lock file"):
        with output_lock(tmp_path / "theirs.csv"):
            pass
    assert stranger.read_text() == "not a pid: somebody's notes\n"  # neither replaced nor removed
