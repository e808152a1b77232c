"""The ``imgcls`` entry point as a user first meets it: no arguments is a usage error (exit 2 with the
stage list), and every stage's ``--help`` is plain text that comes without importing torch (it used
to take seconds: torch and torchvision alone import in ~3.5 s + 6 s on a cold machine)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from imgcls.cli import STAGES
from tests.conftest import REPO_ROOT
from tests.train_helpers import cli_env

HEAVY = ("torch", "torchvision", "timm")
# Runs the real dispatcher, then reports (at exit, after argparse has exited 0) which heavy packages it imported.
PROBE = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("IMPORTED " + " ".join(sorted({{m.split('.')[0] for m in sys.modules}}
                                                                      & set({heavy!r}))) + "\\n"))
from imgcls.cli import main
sys.exit(main({argv!r}))
"""


def probe(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv)], cwd=REPO_ROOT,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    line = [text for text in result.stderr.splitlines() if text.startswith("IMPORTED")]
    assert line, result.stderr[-2000:]
    return result, set(line[-1].split()[1:])


def test_no_arguments_is_a_usage_error_that_lists_the_stages():
    result = subprocess.run([sys.executable, "-m", "imgcls"], cwd=REPO_ROOT, env=cli_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: imgcls <stage>") and "train" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_help_is_plain_text_and_imports_no_torch(stage):
    result, imported = probe([stage, "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: imgcls {stage}"), result.stdout[:200]
    assert "``" not in result.stdout  # RST literals from module docstrings
    assert not imported, f"imgcls {stage} --help imported {sorted(imported)}"


def test_the_probe_sees_torch_when_it_is_imported(tmp_path):
    """The import check above can fail: a command that does import torch is reported."""
    result, imported = probe(["train", "--data", str(tmp_path / "nowhere"), "--arch", "tiny",
                              "--out", str(tmp_path / "run")])
    assert result.returncode == 2
    assert "torch" in imported
