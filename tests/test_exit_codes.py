"""The exit codes docs/getting-started.md documents, enforced: each stage run as a user runs it (``python -m imgcls``)
with a representative bad input exits 2 with ONE line on stderr naming the problem, never a
traceback. Also: a serving-only install says which extra a stage needs, and ``imgcls --help`` says
which stages the installed extras support."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.service.host.launcher import child_environment, free_port
from tests.conftest import REPO_ROOT


def imgcls(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], cwd=cwd, env=child_environment(env),
                          capture_output=True, text=True, timeout=120)


def assert_one_line_exit_2(result: subprocess.CompletedProcess, *expected: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-3000:]}"
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """What ``imgcls train`` leaves in runs/NAME (the files that identify a run; no model needed)."""
    run = tmp_path_factory.mktemp("runs") / "mine"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "card.json").write_text("{}")
    (run / "checkpoint" / "weights.safetensors").write_bytes(b"")
    (run / "split.json").write_text("{}")
    return run


def test_unknown_stage_and_usage_error(tmp_path):
    assert_one_line_exit_2(imgcls("nosuch"), "unknown stage 'nosuch'", "score")
    assert_one_line_exit_2(imgcls("score", "b", "x", "--out", tmp_path / "o.csv", "--top-k", "many"),
                           "imgcls score:", "--top-k", "invalid int value")


def test_digits_into_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a folder")
    assert_one_line_exit_2(imgcls("digits", target), "is not a directory")


def test_train_without_data(tmp_path):
    assert_one_line_exit_2(imgcls("train", "--data", tmp_path / "nowhere", "--arch", "tiny", "--out", tmp_path / "r"),
                           "imgcls train:")


def test_export_of_no_run_and_of_a_run_without_a_finished_epoch(tmp_path):
    assert_one_line_exit_2(imgcls("export", tmp_path / "runs" / "nosuch"), "no such run directory")
    early = tmp_path / "runs" / "early"
    early.mkdir(parents=True)
    (early / "split.json").write_text("{}")
    assert_one_line_exit_2(imgcls("export", early, "--out", tmp_path / "b"), "no epoch has completed yet")


def test_score_and_serve_of_a_training_run_say_export_it_first(fake_run, tmp_path):
    hint = f"export it first: imgcls export {fake_run}"
    assert_one_line_exit_2(imgcls("score", fake_run, tmp_path, "--out", tmp_path / "s.csv", "--no-progress"), hint)
    assert_one_line_exit_2(imgcls("serve", fake_run, "--port", free_port()), hint)


def test_serve_of_a_damaged_bundle_is_one_line_before_the_server_says_anything(tmp_path):
    # the models are verified while BentoML's CLI loads: a refusal must still come before any of its output
    from tests.factories import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-16] + bytes(16))
    result = imgcls("serve", bundle, "--port", free_port())
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "model.onnx" in errors[0] and "does not match" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "BentoServer" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert all(line.startswith(("INFO imgcls", "ERROR imgcls")) for line in result.stderr.splitlines() if line.strip())


def test_serve_bad_port_variable_bad_flag_and_port_in_use(fake_run):
    assert_one_line_exit_2(imgcls("serve", fake_run, env={"IMGCLS_PORT": "abc"}), "IMGCLS_PORT", "'abc'")
    assert_one_line_exit_2(imgcls("serve", fake_run, "--workers", "-1"), "--workers", "must be >= 0")
    assert_one_line_exit_2(imgcls("serve", fake_run, env={"IMGCLS_TIMEOUT": "-1"}), "IMGCLS_TIMEOUT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_exit_2(imgcls("serve", fake_run, "--port", port), f"cannot listen on 127.0.0.1:{port}")
    assert "serving" not in line


def _serving_only(tmp_path: Path) -> dict[str, str]:
    """An environment in which torch, torchvision, timm, onnx and scikit-learn are not installed."""
    hook = tmp_path / "serving-only"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "for name in ('torch', 'torchvision', 'timm', 'onnx', 'sklearn'):\n"
        "    sys.modules[name] = None  # import fails, importlib.util.find_spec() says absent\n"
    )
    return {"PYTHONPATH": f"{hook}:{REPO_ROOT}"}


def test_a_serving_only_install_names_the_extra_to_install(tmp_path):
    env = _serving_only(tmp_path)
    for stage in ("train", "export", "digits"):
        assert_one_line_exit_2(imgcls(stage, "--help", env=env), f"imgcls {stage}:", "pip install 'imgcls[train]'")
    usage = imgcls("--help", env=env)
    assert usage.returncode == 0
    marked = {line.split()[0] for line in usage.stdout.splitlines() if line.endswith("[not installed]")}
    assert marked == {"digits", "train", "export", "demo"}  # score and serve work without torch
    installed = imgcls("--help")
    assert "[not installed]" not in installed.stdout and "Exit codes" in installed.stdout


def test_export_source_and_weights_mistakes(fake_run, tmp_path):
    """A typo in --pretrained names close matches; --weights is checked, and refused where it does not apply."""
    line = assert_one_line_exit_2(imgcls("export", "--pretrained", "resnet5", "--out", tmp_path / "b"),
                                  "unknown architecture", "did you mean")
    assert "resnet50" in line.split("did you mean")[1].split("?")[0]
    assert_one_line_exit_2(imgcls("export", "--pretrained", "tiny", "--out", tmp_path / "b"), "no ImageNet weights")
    assert_one_line_exit_2(imgcls("export", "--pretrained", "efficientnet_lite0", "--weights", tmp_path / "nosuch.pt",
                                  "--out", tmp_path / "b"), "nosuch.pt", "no such file")
    assert_one_line_exit_2(imgcls("export", fake_run, "--weights", tmp_path / "nosuch.pt", "--out", tmp_path / "b"),
                           "--weights applies only with --pretrained")
    assert not (tmp_path / "b").exists()


def test_export_offline_weights_advice_is_one_that_works(tmp_path):
    """Uncached torchvision weights with the network unreachable: the advice names what export accepts
    (a local FILE), never `--weights none`, which export refuses."""
    hook = tmp_path / "offline"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(self, address, *a):\n"
        "    raise OSError('network disabled by test')\n"
        "socket.socket.connect = _refuse\n"
        "socket.getaddrinfo = lambda *a, **k: (_ for _ in ()).throw(socket.gaierror('offline'))\n"
    )
    env = {"PYTHONPATH": f"{hook}:{REPO_ROOT}", "TORCH_HOME": str(tmp_path / "torch-home")}
    line = assert_one_line_exit_2(imgcls("export", "--pretrained", "resnet18", "--out", tmp_path / "b", env=env),
                                  "--pretrained resnet18", "--weights FILE")
    assert "--weights none" not in line
    assert_one_line_exit_2(imgcls("export", "--pretrained", "resnet18", "--weights", "none", "--out", tmp_path / "b"),
                           "--weights none", "no such file")
