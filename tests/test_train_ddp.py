"""The same command under torchrun: 2 processes, gloo on CPU, one set of files written by rank 0."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imgcls.models.training.checkpoint import load_checkpoint
from imgcls.digits import write_digits
from tests.conftest import REPO_ROOT
from tests.train_helpers import TINY_FINETUNE, cli_env

CASES = {
    "gradual": [*TINY_FINETUNE, "--strategy", "gradual", "--unfreeze-epoch", "1", "--epochs", "2"],
    "head-cached": ["--arch", "tiny", "--weights", "none", "--strategy", "head", "--epochs", "2",
                    "--loader-workers", "0", "--threads", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_torchrun_two_processes_writes_one_checkpoint(tmp_path, case):
    data = tmp_path / "data"
    write_digits(data, limit_per_class=10)
    out = tmp_path / "runs" / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "imgcls.models.training.cli", "--data", str(data), "--out", str(out), *CASES[case]]
    result = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    _, card = load_checkpoint(out)
    assert card.train["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["card.json", "weights.safetensors"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".imgcls.json"]  # the run's marker only
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer, not two
    # 80 training images, 40 per rank: the reported count sums both ranks' shards, and every image
    # trains, the last partial batch (8 per rank) included.
    assert json.loads(lines[0])["train_images"] == 80
    assert result.stdout.count("best epoch") == 1
