"""Security: no file a user hands us is ever unpickled, and the serving image holds no training code.

The malicious files below would create ``marker`` if unpickled (``__reduce__`` -> ``open(marker, "w")``);
every entry point must refuse them with a message and leave ``marker`` absent. The unit-level case
(``read_state_dict``) is tests/test_zoo.py::test_pickle_with_code_is_refused; these go through the CLIs.
"""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.factories import make_image_folder, make_tiny_run
from imgcls.models.core.atomic import sha256_file
from imgcls.models.core.card import ModelCard


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"conv.weight": Exploit(marker)}))
    return path


def torch_zip_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {"conv.weight": Exploit(marker)}, "version": 1}, path)
    return path


MAKERS = {"raw pickle": raw_pickle, "torch.save zip": torch_zip_pickle}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("security-data"), per_class=4, size=(40, 36))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".bin"])
@pytest.mark.parametrize("maker", list(MAKERS))
def test_train_weights_pickle_is_refused(maker, suffix, data_dir, tmp_path, caplog):
    from imgcls.models.training.cli import main as train_main

    marker = tmp_path / "pwned"
    evil = MAKERS[maker](tmp_path / f"evil{suffix}", marker)
    assert not marker.exists()
    with caplog.at_level(logging.ERROR):
        code = train_main(["--data", str(data_dir), "--arch", "tiny", "--weights", str(evil), "--epochs", "1",
                           "--out", str(tmp_path / "run"), "--loader-workers", "0", "--threads", "1"])
    assert code == 2
    assert not marker.exists(), "the pickle was executed"
    assert re.search(r"refused|not a readable safetensors|expected a mapping", caplog.text), caplog.text
    assert not (tmp_path / "run" / "checkpoint").exists()


def _poison_checkpoint(run_dir: Path, marker: Path, maker: str) -> None:
    """Replace weights.safetensors by a pickle and make card.json's hash agree (a consistent lie)."""
    checkpoint = run_dir / "checkpoint"
    weights = checkpoint / "weights.safetensors"
    MAKERS[maker](weights, marker)
    card = ModelCard.load(checkpoint)
    card.updated(lineage={"weights_sha256": sha256_file(weights)}).save(checkpoint)


@pytest.mark.parametrize("maker", list(MAKERS))
def test_export_of_a_pickled_checkpoint_is_refused(maker, tmp_path, capsys):
    from imgcls.export.cli import main as export_main
    from imgcls.models.training.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    run_dir = make_tiny_run(tmp_path / "work", per_class=4)
    _poison_checkpoint(run_dir, marker, maker)
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_checkpoint(run_dir)
    out = tmp_path / "bundle"
    code = export_main([str(run_dir), "--out", str(out)])
    assert code != 0
    assert "unreadable weights" in capsys.readouterr().err
    assert not marker.exists(), "the pickle was executed"
    assert not out.exists()


def test_resume_from_a_pickled_train_state_is_refused(tmp_path, caplog):
    from imgcls.models.training.resume import TRAIN_STATE_FILENAME
    from imgcls.models.training.cli import main as train_main

    marker = tmp_path / "pwned"
    run_dir = make_tiny_run(tmp_path / "work", per_class=4)
    torch_zip_pickle(run_dir / TRAIN_STATE_FILENAME, marker)
    with caplog.at_level(logging.ERROR):
        code = train_main(["--resume", str(run_dir), "--threads", "1"])
    assert code == 2
    assert not marker.exists(), "the pickle was executed"
    assert "cannot resume" in caplog.text and TRAIN_STATE_FILENAME in caplog.text


# ---------------------------------------------------------------- the serving container
def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions, split into build stages (continuation lines joined)."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[list[str]] = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_serving_image_runs_as_non_root_without_torch_or_training_code():
    """Static checks of the final stage, no Docker needed; the built image itself (``id -u`` != 0,
    ``import torch`` fails, no models/zoo/ or models/training/) is asserted by tests/test_container.py."""
    stages = dockerfile_stages()
    assert stages, "Dockerfile has no FROM"
    final = stages[-1]
    users = [line.split(None, 1)[1].strip() for line in final if line.upper().startswith("USER ")]
    assert users, "the serving stage never switches to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    text = "\n".join(final).lower()
    for extra in ("[train", ",train", "train]"):
        assert extra not in text, f"the serving stage installs the train extra ({extra})"
    requirements = sorted((REPO_ROOT / "docker").glob("requirements-*.txt"))
    assert requirements, "no docker/requirements-*.txt"
    for path in requirements:
        names = [re.split(r"[<>=\[; ]", line.strip(), maxsplit=1)[0].lower()
                 for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert not {"torch", "torchvision", "timm", "onnxscript"} & set(names), (path.name, names)
    for line in final:
        words = line.split()
        if words[0].upper() in ("COPY", "ADD"):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            bad = [src for src in sources if TRAINING_SOURCE.match(src)]
            assert not bad, f"the serving stage copies training code or the whole tree: {line}"
        if words[0].upper() == "RUN" and "pip" in words:
            assert not re.search(r"\s[\"']?\./?(\[|[\"']|\s|$)", line), f"installs the whole project (export/, models/train*): {line}"


# sources a serving image must not copy: the whole tree, export/, all of models/, or its torch side
TRAINING_SOURCE = re.compile(r"^(\./?|\*|(\./)?export(/.*)?|(\./)?models/?|(\./)?models/(training|zoo)(/.*)?)$")
