"""Serving faults: `imgcls serve` refuses a bundle it cannot serve truthfully, and a device it cannot get.

Each case runs the real ``python -m imgcls.cli serve`` and expects: a non-zero exit within the
time limit (not a worker restart loop), a message naming the problem, and no server left running.
The Predictor-level checks behind these messages are unit-tested in tests/test_predictor_bundle.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.factories import make_tiny_bundle
from tests.robustness.harness import process_tree, record
from imgcls.models.core.atomic import sha256_file
from imgcls.models.core.card import ModelCard
from imgcls.service.host.launcher import free_port

RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-bundles")
    good = make_tiny_bundle(root / "good")
    other = make_tiny_bundle(root / "other", classes=("ant", "bee", "cow", "elk"), per_class=4)
    return good, other


def rehash(bundle, name="model.onnx"):
    """card.json's lineage made to agree with the file, so the next check down is the one exercised."""
    card = ModelCard.load(bundle)
    card.updated(lineage={f"sha256:{name}": sha256_file(bundle / name)}).save(bundle)


def corrupt(bundle, _other):
    (bundle / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 200)


def corrupt_rehashed(bundle, other):
    corrupt(bundle, other)
    rehash(bundle)


def swapped(bundle, other):
    shutil.copyfile(other / "model.onnx", bundle / "model.onnx")


def swapped_rehashed(bundle, other):
    swapped(bundle, other)
    rehash(bundle)


def card_disagrees(bundle, _other):
    data = json.loads((bundle / "card.json").read_text())
    data["class_names"] = ["cat", "dog", "owl", "emu"]
    (bundle / "card.json").write_text(json.dumps(data))


def truncated_onnx(bundle, _other):
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) // 2])
    rehash(bundle)


def no_change(_bundle, _other):
    pass


# name -> (damage, extra serve args, pattern the message must contain)
CASES = {
    "corrupt onnx": (corrupt, [], r"model\.onnx: sha256 .* does not match"),
    "corrupt onnx, hash updated": (corrupt_rehashed, [], r"model\.onnx: onnxruntime cannot load it"),
    "truncated onnx, hash updated": (truncated_onnx, [], r"model\.onnx: onnxruntime cannot load it"),
    "swapped onnx": (swapped, [], r"model\.onnx: sha256 .* does not match"),
    "swapped onnx, hash updated": (swapped_rehashed, [], r"disagrees with card\.json on 'class_names'"),
    "card disagrees with onnx": (card_disagrees, [], r"disagrees with card\.json on 'class_names'"),
    "int8 asked, not in bundle": (no_change, ["--precision", "int8"], r"no int8 model file model\.int8\.onnx"),
    "--device cuda without a GPU": (no_change, ["--device", "cuda"], r"(?i)cuda"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_serve_refuses_to_start(name, bundles, tmp_path):
    import re

    damage, args, pattern = CASES[name]
    good, other = bundles
    bundle = tmp_path / "bundle"
    shutil.copytree(good, bundle)
    damage(bundle, other)
    command = [sys.executable, "-m", "imgcls.cli", "serve", str(bundle), "--host", "127.0.0.1",
               "--port", str(free_port()), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        leftover = process_tree(process.pid)
        os.killpg(process.pid, 9)
        process.wait()
        pytest.fail(f"imgcls serve kept running with a bad bundle ({name}); processes {leftover}")
    elapsed = time.perf_counter() - started
    assert process.returncode not in (0, None), output
    assert re.search(pattern, output), output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert lines, output
    RESULTS[name] = {"exit": process.returncode, "seconds": round(elapsed, 2), "message": lines[-1][:300]}


def test_zz_record_figures():
    assert len(RESULTS) == len(CASES), "run the whole module to record figures"
    record("serve_faults", RESULTS)
