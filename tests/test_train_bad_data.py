"""Bad data and bad options: a clear message, exit code 2, no traceback."""
from __future__ import annotations

import pytest
import torch

from imgcls.models.training.cli import main
from tests.factories import make_image_folder

TINY = ["--arch", "tiny", "--weights", "none", "--strategy", "head", "--epochs", "1", "--loader-workers", "0"]


def _layout(root, kind):
    root.mkdir(parents=True)
    if kind == "single_class":
        make_image_folder(root, classes=("cat",), per_class=3)
    elif kind == "class_without_images":
        make_image_folder(root, classes=("cat", "dog"), per_class=3)
        (root / "owl").mkdir()
        (root / "owl" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("kind, message", [
    ("empty", "has no class folders"),
    ("single_class", "only one class (cat)"),
    ("class_without_images", "class folder(s) with no images: owl"),
])
def test_structural_problems_exit_2_with_message(tmp_path, caplog, kind, message):
    data = _layout(tmp_path / "data", kind)
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert message in caplog.text
    assert not (tmp_path / "run" / "checkpoint").exists()


def _with_unreadable(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    (data / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (data / "owl" / "empty.png").write_bytes(b"")
    return data


def test_unreadable_files_are_skipped_with_a_count(tmp_path, caplog):
    torch.set_num_threads(1)
    data = _with_unreadable(tmp_path)
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert "skipping 2 of 20 unreadable images" in caplog.text
    assert "dog/broken.jpg" in caplog.text and "owl/empty.png: empty" in caplog.text
    import json

    card = json.loads((tmp_path / "run" / "checkpoint" / "card.json").read_text())
    assert card["metrics"]["skipped_unreadable"] == 2
    listed = (tmp_path / "run" / "split.json").read_text()
    assert "broken.jpg" not in listed and "empty.png" not in listed


def test_strict_refuses_unreadable_files(tmp_path, caplog):
    data = _with_unreadable(tmp_path)
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), *TINY, "--strict"]) == 2
    assert "2 of 20 images are unreadable (--strict)" in caplog.text
    assert "dog/broken.jpg" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "run").exists()


def test_option_and_run_directory_problems(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", per_class=3)
    assert main(["--data", str(data), "--out", str(tmp_path / "r"), "--arch", "nope"]) == 2
    assert "unknown architecture 'nope'" in caplog.text
    assert main(["--arch", "tiny"]) == 2 and "missing --data, --out" in caplog.text
    assert main(["--resume", str(tmp_path / "nothing")]) == 2 and "train_state.pt is missing" in caplog.text
    (tmp_path / "taken" / "checkpoint").mkdir(parents=True)
    assert main(["--data", str(data), "--out", str(tmp_path / "taken"), *TINY, "--overwrite"]) == 2
    assert "holds files imgcls did not write as a training run (checkpoint/)" in caplog.text  # not a run
    for name in ("card.json", "weights.safetensors"):  # a run of an imgcls that wrote no marker
        (tmp_path / "taken" / "checkpoint" / name).write_text("{}")
    assert main(["--data", str(data), "--out", str(tmp_path / "taken"), *TINY]) == 2
    assert "already exists and holds a training run" in caplog.text and "pass --resume" in caplog.text
    (tmp_path / "taken" / "keep.txt").write_text("not ours")
    assert main(["--data", str(data), "--out", str(tmp_path / "taken"), *TINY, "--overwrite"]) == 0
    assert (tmp_path / "taken" / "keep.txt").exists() and (tmp_path / "taken" / "checkpoint" / "card.json").exists()
    assert main(["--data", str(data), "--out", str(tmp_path / "g"), *TINY[:4], "--strategy", "gradual",
                 "--epochs", "2", "--unfreeze-epoch", "5"]) == 2
    assert "--unfreeze-epoch must be within" in caplog.text
