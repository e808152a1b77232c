"""`imgcls export` end to end: INT8 gate pass/refuse, typed failures, SIGKILL safety, offline."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imgcls.export.cli import EXIT_REFUSED, EXIT_USAGE, main
from imgcls.export.quantize import FAST_TYPES, TARGET_TYPES
from imgcls.models.core.atomic import sha256_file
from imgcls.models.core.card import ModelCard
from tests.factories import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A tiny model fitted for a few steps on 4 classes (so accuracy means something)."""
    return make_tiny_run(tmp_path_factory.mktemp("fitted"), classes=("cat", "dog", "owl", "fox"),
                         per_class=12, train_steps=40)


def _embedded(path: Path) -> ModelCard:
    return ModelCard.from_metadata_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_int8_and_fp16_pass_the_gate(fitted_run, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main([str(fitted_run), "--out", str(out), "--int8", "--fp16", "--no-progress",
                 "--calibration-method", "percentile"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".imgcls.json", "card.json", "edge", "export_report.json", "model.fp16.onnx", "model.int8.onnx", "model.onnx"]
    card = ModelCard.load(out)
    int8 = card.export["int8"]
    assert int8["status"] == "passed" and int8["mode"] == "static" and int8["format"] == "QDQ"
    fast = "(U8S8)" in int8["method"]  # VNNI tries its fast format first
    expected = FAST_TYPES[int8["target"]] if fast else TARGET_TYPES[int8["target"]]
    assert (int8["activation_type"], int8["weight_type"], int8["reduce_range"]) == expected
    assert int8["calibration_method"] == "percentile" and int8["calibration_images"] > 0
    gate = int8["gate"]
    assert gate["fp32_top1"] >= 0.9, "the fitted tiny model should classify its generated classes"
    assert gate["accuracy_drop_points"] <= 1.0 and gate["images"] == 12
    assert gate["speed_ratio"] > 0 and gate["size_ratio"] > 0
    assert card.export["fp16"]["status"] == "passed"
    for name, info in card.export["files"].items():  # every ONNX file: card embedded, hash in card.json
        assert _embedded(out / name).class_names == card.class_names
        assert card.lineage[f"sha256:{name}"] == sha256_file(out / name)
        assert info["bytes"] == (out / name).stat().st_size
    assert card.export["files"]["model.int8.onnx"]["precision"] == "int8"
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Each file answers the uint8 contract with the same top-1 on a real image batch.
    report = json.loads((out / "export_report.json").read_text())
    assert report["int8"] == int8
    table = capsys.readouterr().out
    assert "model.int8.onnx" in table and "int8" in table


def test_too_strict_gate_refuses_int8_and_keeps_fp32(fitted_run, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = main([str(fitted_run), "--out", str(out), "--int8", "--max-accuracy-drop", "-1", "--no-progress",
                 "--int8-target", "arm64"])
    assert code == EXIT_REFUSED
    assert sorted(p.name for p in out.iterdir()) == [".imgcls.json", "card.json", "export_report.json", "model.onnx"]
    card = ModelCard.load(out)
    assert card.export["int8"]["status"] == "refused" and "exceeds the allowed -1" in card.export["int8"]["reason"]
    assert card.export["int8"]["activation_type"] == "QInt8"  # arm64: S8S8
    assert list(card.export["files"]) == ["model.onnx"]
    printed = capsys.readouterr()
    said = [line for line in (printed.out + printed.err).splitlines() if "exceeds the allowed -1" in line]
    assert len(said) == 1 and said[0].startswith("imgcls export: the INT8 variant was not written")  # once


def test_legacy_exporter_and_bad_run_give_clear_errors(fitted_run, tmp_path, capsys):
    out = tmp_path / "legacy"
    assert main([str(fitted_run), "--out", str(out), "--exporter", "legacy", "--no-progress"]) == 0
    card = ModelCard.load(out)
    assert card.export["exporter"] == "legacy" and card.export["parity"]["passed"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(["logits"], {"pixels": np.zeros((3, 3, 32, 32), np.uint8)})[0].shape == (3, 4)
    capsys.readouterr()
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no such run directory" in err and "Error" not in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    assert main([str(fitted_run), "--out", str(tmp_path / "y"), "--opset", "11"]) == 2


def test_existing_bundle_is_refused_and_a_checkpoint_directory_is_accepted(fitted_run, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    assert main([str(fitted_run / "checkpoint"), "--fp16", "--no-progress"]) == 0  # as --help promises
    out = tmp_path / "bundles" / fitted_run.name  # named after the run, not "checkpoint"
    names = sorted(p.name for p in out.iterdir())
    assert "model.fp16.onnx" in names
    capsys.readouterr()
    assert main([str(fitted_run), "--out", str(out), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == names  # the fp16 variant is still there
    assert main([str(fitted_run), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert not (out / "model.fp16.onnx").exists()  # replaced on request only
    early = tmp_path / "runs" / "early"
    early.mkdir(parents=True)
    shutil.copy(fitted_run / "split.json", early / "split.json")  # a run whose first epoch has not finished
    capsys.readouterr()
    assert main([str(early), "--out", str(tmp_path / "z"), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no epoch has completed yet" in err and "Traceback" not in err and not (tmp_path / "z").exists()


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No GPU, and any attempt to open a network connection raises (sitecustomize in the child)."""
    hook = tmp_path / "offline"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import socket\n"
        "_connect = socket.socket.connect\n"
        "def _refuse(self, address, *a):\n"
        "    if self.family != socket.AF_UNIX:\n"
        "        raise OSError('network disabled by test: ' + repr(address))\n"
        "    return _connect(self, address, *a)\n"
        "socket.socket.connect = _refuse\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{hook}{os.pathsep}{REPO}",
               OMP_NUM_THREADS="1", NO_PROXY="*")
    return env


def test_sigkill_leaves_no_partial_bundle_and_rerun_succeeds_offline(fitted_run, tmp_path):
    out = tmp_path / "bundles" / "run"
    command = [sys.executable, "-m", "imgcls.cli", "export", str(fitted_run), "--out", str(out), "--int8",
               "--no-progress"]
    env = _offline_env(tmp_path)
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staging: list[Path] = []
    while time.monotonic() < deadline and child.poll() is None and not staging:
        staging = list(out.parent.glob(".run.staging-*")) if out.parent.exists() else []
        time.sleep(0.02)
    assert staging, f"the export never started staging: {child.communicate()}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed export must not leave a bundle"
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == [".imgcls.json", "card.json", "edge", "export_report.json",
                                                     "model.int8.onnx", "model.onnx"]
    assert not list(out.parent.glob(".run.staging-*")), "the rerun removes the killed export's staging dir"
    assert ModelCard.load(out).export["int8"]["status"] == "passed"
