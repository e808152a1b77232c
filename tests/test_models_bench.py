"""`imgcls models --benchmark`: the real export (fp32 + INT8) and ONNX Runtime timing of `tiny` and
one real architecture (mobilenet_v2), cached per machine and shown by later listings."""
import json
import os
import subprocess
import sys

import pytest

from imgcls.model_bench import BenchConfig, load_results, measure, results_path
from imgcls.models.core.cpu import local_target
from imgcls.models_cli import main
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
ARCHS = ("tiny", "mobilenet_v2")


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """One real `python -m imgcls models --benchmark` run, short caps; (cache dir, its JSON)."""
    cache = tmp_path_factory.mktemp("models-cache")
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", "models", "--benchmark", *ARCHS, "--batch", "1,2", "--max-seconds", "1",
         "--json", "--no-progress", "--cache-dir", str(cache)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[2/2] mobilenet_v2" in done.stderr  # progress lines when stderr is not a terminal
    return cache, {r["arch"]: r for r in json.loads(done.stdout)["rows"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_and_int8_are_timed_at_each_batch(benched, arch):
    _, rows = benched
    entry = rows[arch]["measured"]
    assert entry["weights"] == "none" and entry["provider"] == "CPUExecutionProvider"
    for precision in ("fp32", "int8"):
        assert set(entry[precision]) == {"1", "2"}
        for figures in entry[precision].values():
            assert figures["runs"] >= 3 and 0 < figures["latency_ms_p50"] <= figures["latency_ms_p90"]
            assert figures["images_per_s"] > 0 and 0 < figures["cpu_share"] and figures["latency_ms_min"] > 0
    assert rows[arch]["latency_ms"] == entry["fp32"]["1"]["latency_ms_p50"]
    assert rows[arch]["images_per_s"] == entry["fp32"]["2"]["images_per_s"]
    assert entry["int8_settings"]["mode"] == "static" and entry["int8_settings"]["target"] == local_target()
    assert 0.0 <= entry["int8_top1_agreement"] <= 1.0 and entry["agreement_images"] == 32
    # random init: INT8's speed is real, whether it keeps accuracy is not known
    assert rows[arch]["int8_friendly"] is None and "random init" in rows[arch]["edge"]
    assert entry["seconds"] - entry["prepare_seconds"] < 120  # the 1 s cap per model held (plus warm-up, sessions)


def test_int8_file_of_a_real_backbone_is_smaller(benched):
    _, rows = benched
    entry = rows["mobilenet_v2"]["measured"]
    assert entry["int8_bytes"] < 0.5 * entry["fp32_bytes"]
    assert entry["fp32_bytes"] > 10e6  # 3.5 M float32 parameters


def test_later_listings_show_this_machines_figures_only(benched, capsys):
    cache, _ = benched
    assert results_path(BenchConfig(cache=cache)).is_file()
    assert main(["--json", "--cache-dir", str(cache), "--max-latency-ms", "1e6", "--sort", "latency_ms"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["arch"] for r in rows] == ["tiny", "mobilenet_v2"]  # only measured rows pass a latency filter
    assert main(["--json", "--cache-dir", str(cache), "--threads", "1"]) == 0  # another machine key
    assert all(r["measured"] is None for r in json.loads(capsys.readouterr().out)["rows"])


def test_a_second_run_reuses_the_exported_files(benched):
    cache, rows = benched
    config = BenchConfig(cache=cache, batches=(1,), max_seconds=0.2)
    again = measure("tiny", config)
    assert again["prepare_seconds"] == 0.0 and again["fp32"]["1"]["runs"] >= 3
    assert load_results(config)["models"]["tiny"]["measured_at"] == rows["tiny"]["measured"]["measured_at"]
