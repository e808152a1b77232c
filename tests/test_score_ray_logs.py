"""``imgcls score --engine ray`` into a log file: progress as log lines, no bar fragments, no Ray noise.

A real ``imgcls score`` process starting its own local Ray, its stderr a file as under ``nohup``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("ray")

from tests.conftest import REPO_ROOT  # noqa: E402
from tests.factories import make_image_folder, make_tiny_bundle  # noqa: E402
from imgcls.service.scoring.dataset_dir import read_scored_rows  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("ray-logs"))


@pytest.mark.parametrize("out_name", ["scores.csv", "dataset"])
def test_stderr_in_a_file_holds_log_lines_only(bundle, tmp_path, out_name):
    images = make_image_folder(tmp_path / "images", per_class=40, size=(36, 36))
    out, log_file = tmp_path / out_name, tmp_path / "score.log"
    command = [sys.executable, "-m", "imgcls", "score", str(bundle), str(images), "--out", str(out),
               "--engine", "ray", "--batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "IMGCLS_PROGRESS_INTERVAL_S": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log_file, "wb") as stderr:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, timeout=300)
    text = log_file.read_text(errors="replace")
    assert result.returncode == 0, text[-3000:]
    assert len(read_scored_rows(out, 3)) == 120
    assert "\r" not in text  # no bar fragments, neither ours nor Ray Data's
    assert "core_worker" not in text and "streaming_executor" not in text and "WARNING authentication" not in text
    lines = text.splitlines()
    assert all(line.startswith(("INFO ", "WARNING ", "ERROR ")) for line in lines), text[-3000:]
    if out.suffix:  # rows stream back to this process: its progress lines, as the local scorer's
        assert any("scoring (ray): " in line and "/120 images (" in line for line in lines), text[-3000:]
