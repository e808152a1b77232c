"""Nothing imgcls did not write is deleted or replaced; no ``--out`` overlaps a command's inputs.

Unit tests of ``imgcls.models.core.ownership``, then every writing command run for real (``imgcls
train``, ``export``, ``digits``, ``score``) with ``--out`` at a labelled dataset, a training run,
a folder holding runs and a folder of user files, with and without ``--overwrite``: each must exit
2 naming the paths, and every byte of every folder must survive. ``--overwrite`` on a command's
own earlier output still replaces it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.models.core.ownership import (
    KINDS, MARKER, OwnershipError, check_disjoint, check_replaceable, check_replaceable_file, holds, read_marker,
    write_marker,
)
from tests.conftest import REPO_ROOT
from tests.factories import make_tiny_run
from tests.train_helpers import cli_env

TINY_TRAIN = ["--arch", "tiny", "--weights", "none", "--strategy", "finetune", "--epochs", "1", "--batch-size", "8",
              "--loader-workers", "0", "--threads", "1", "--no-augment"]


# ----------------------------------------------------------------------------------------- the module


def test_marker_records_kind_command_and_version(tmp_path):
    from imgcls import __version__

    path = write_marker(tmp_path / "b", "bundle")
    assert path == tmp_path / "b" / MARKER
    assert json.loads(path.read_text()) == {"kind": "bundle", "written_by": "imgcls export",
                                            "imgcls_version": __version__, "format_version": 1}
    assert read_marker(tmp_path / "b")["kind"] == "bundle" and holds(tmp_path / "b", "bundle")
    assert not holds(tmp_path / "b", "run")
    (tmp_path / "b" / MARKER).write_text('{"kind": "something else"}')
    assert read_marker(tmp_path / "b") is None
    with pytest.raises(KeyError, match="unknown artefact kind"):
        write_marker(tmp_path / "c", "photos")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_or_empty_folder_is_always_fine(tmp_path, kind):
    assert check_replaceable(tmp_path / "new", kind, overwrite=False) is False
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty", kind, overwrite=False) is False


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_user_files_are_never_replaceable(tmp_path, kind):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OwnershipError, match=r"--out .*mine holds files imgcls did not write .*notes\.txt"):
            check_replaceable(tmp_path / "mine", kind, overwrite=overwrite)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OwnershipError, match="is a file"):
        check_replaceable(tmp_path / "file", kind, overwrite=True)


def test_own_kind_needs_overwrite_and_another_kind_is_refused(tmp_path):
    write_marker(tmp_path / "run", "run")
    with pytest.raises(OwnershipError, match="already exists and holds a training run.*pass --resume"):
        check_replaceable(tmp_path / "run", "run", overwrite=False, how="pass --resume")
    assert check_replaceable(tmp_path / "run", "run", overwrite=True) is True
    with pytest.raises(OwnershipError, match="holds a training run written by imgcls train, not a bundle"):
        check_replaceable(tmp_path / "run", "bundle", overwrite=True)


def test_unmarked_folders_of_older_versions_are_recognised_by_layout(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "card.json").write_text("{}")
    assert not holds(run, "run")  # a card without weights is not a complete checkpoint
    (run / "checkpoint" / "weights.safetensors").write_bytes(b"w")
    assert holds(run, "run") and not holds(run, "bundle")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "card.json").write_text("{}")
    assert not holds(bundle, "bundle")
    (bundle / "model.onnx").write_bytes(b"m")
    assert holds(bundle, "bundle") and check_replaceable(bundle, "bundle", overwrite=True)
    digits = tmp_path / "digits"
    (digits / "3").mkdir(parents=True)
    (digits / "3" / "0003.png").write_bytes(b"p")
    assert holds(digits, "digits")
    (digits / "3" / "holiday.png").write_bytes(b"p")
    assert not holds(digits, "digits")
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "part-1.parquet").write_bytes(b"p")
    assert holds(scores, "scores")
    (scores / "notes.txt").write_text("x")
    assert not holds(scores, "scores")


def test_a_bundle_with_user_files_in_it_is_not_replaced(tmp_path):
    write_marker(tmp_path / "b", "bundle")
    (tmp_path / "b" / "model.onnx").write_bytes(b"m")
    (tmp_path / "b" / "README.txt").write_text("my notes")
    with pytest.raises(OwnershipError, match=r"also files imgcls export did not write \(README\.txt\)"):
        check_replaceable(tmp_path / "b", "bundle", overwrite=True)


def test_disjoint_refuses_equal_inside_containing_and_symlinks(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    for out, relation in ((data, "is"), (data / "cat", "is inside"), (tmp_path, "contains")):
        with pytest.raises(OwnershipError, match=f"--out {out} {relation} --data {data}"):
            check_disjoint(out, [("--data", data)])
    link = tmp_path / "link"
    link.symlink_to(data)
    with pytest.raises(OwnershipError, match=rf"--out {link} is --data {data}"):
        check_disjoint(link, [("--data", data)])
    check_disjoint(tmp_path / "elsewhere", [("--data", data), ("--weights", None)])
    check_disjoint(data / "scores.csv", [("input", data)], inside_ok=("input",))
    with pytest.raises(OwnershipError, match="contains input"):
        check_disjoint(tmp_path, [("input", data)], inside_ok=("input",))


def test_a_file_is_replaced_only_when_recognised(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n")
    with pytest.raises(OwnershipError, match="is not a CSV results file written by imgcls"):
        check_replaceable_file(mine, "a CSV results file", lambda path: False)
    check_replaceable_file(mine, "a CSV results file", lambda path: True)
    (tmp_path / "empty.csv").write_text("")
    check_replaceable_file(tmp_path / "empty.csv", "a CSV results file", lambda path: False)


# ---------------------------------------------------------------------------- every command, for real


def imgcls(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    """Every file's sha256 and every folder under ``root`` (symlinks as their target)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """``data/`` (labelled images), ``runs/tiny`` (a run), ``bundles/tiny`` (its export), ``user/`` (user files)."""
    root = tmp_path_factory.mktemp("world")
    run = make_tiny_run(root, per_class=4)
    done = imgcls("export", run, "--out", root / "bundles" / "tiny")
    assert done.returncode == 0, done.stderr
    user = root / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes\n")
    (user / "sub" / "table.csv").write_text("a,b\n1,2\n")
    (user / "photo.png").write_bytes((root / "data" / "cat" / "cat_000.png").read_bytes())
    (root / "list.txt").write_text(f"{root / 'data' / 'cat' / 'cat_000.png'}\n")
    return root


TARGETS = {"dataset": "data", "run": "runs/tiny", "parent of runs": "runs", "user folder": "user"}


def command(name: str, world: Path, out: Path) -> list[object]:
    if name == "train":
        return ["train", "--data", world / "data", "--out", out, *TINY_TRAIN]
    if name == "export":
        return ["export", world / "runs" / "tiny", "--out", out]
    if name == "digits":
        return ["digits", out, "--limit-per-class", "1"]
    if name == "score":
        return ["score", world / "bundles" / "tiny", world / "data", "--out", out, "--no-progress"]
    raise AssertionError(name)


CASES = [(name, target, overwrite) for name in ("train", "export", "digits", "score") for target in TARGETS
         for overwrite in ((False,) if name == "digits" else (False, True))
         if not (name == "train" and target == "run" and overwrite)]  # train --overwrite RUN: its own kind


@pytest.mark.parametrize(("name", "target", "overwrite"), CASES)
def test_no_command_replaces_what_it_did_not_write(world, name, target, overwrite):
    out = world / TARGETS[target]
    before = tree(world)
    done = imgcls(*command(name, world, out), *(["--overwrite"] if overwrite else []))
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert tree(world) == before  # every byte of every folder survives, nothing is added
    message = [line for line in done.stderr.splitlines() if str(out) in line]
    assert message, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("name", "out", "input_"), [
    ("train", "data/cat", "data"),            # inside --data
    ("train", ".", "data"),                   # containing --data
    ("export", "runs/tiny/bundle", "runs/tiny"),  # inside the run
    ("export", "data/bundle", "data"),        # inside the run's images
    ("score", "bundles/tiny/scores.csv", "bundles/tiny"),  # inside the bundle
    ("score", "list.txt", "list.txt"),        # an input list file
])
def test_out_overlapping_an_input_is_refused_naming_both(world, name, out, input_):
    args = command(name, world, world / out)
    if name == "score" and out == "list.txt":
        args = ["score", world / "bundles" / "tiny", "--list", world / "list.txt", "--out", world / "list.txt"]
    before = tree(world)
    done = imgcls(*args, "--overwrite")
    assert done.returncode == 2, done.stderr[-2000:]
    assert tree(world) == before
    line = [text for text in done.stderr.splitlines() if "overlap" in text]
    assert line and str(world / out) in line[0] and str(world / input_) in line[0], done.stderr[-2000:]


def test_a_symlink_to_the_run_is_refused_as_the_run(world, tmp_path):
    link = tmp_path / "looks-new"
    link.symlink_to(world / "runs" / "tiny")
    before = tree(world)
    done = imgcls("export", world / "runs" / "tiny", "--out", link, "--overwrite")
    assert done.returncode == 2 and tree(world) == before
    assert f"--out {link} is RUN {world / 'runs' / 'tiny'}" in done.stderr


def test_score_never_truncates_or_replaces_a_user_file(world, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_bytes(b"name,amount\nrent,1200\nfood,30")  # no newline at the end: --resume would cut it
    for mode in ("--overwrite", "--resume"):
        done = imgcls(*command("score", world, mine), mode)
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"--out {mine} is not a CSV results file written by imgcls" in done.stderr
        assert mine.read_bytes() == b"name,amount\nrent,1200\nfood,30"


def test_overwrite_replaces_each_commands_own_earlier_output(world, tmp_path):
    run = tmp_path / "run"
    assert imgcls(*command("train", world, run)).returncode == 0
    assert read_marker(run)["kind"] == "run"
    (run / "my-notes.txt").write_text("kept")
    again = imgcls(*command("train", world, run))
    assert again.returncode == 2 and f"--out {run} already exists and holds a training run" in again.stderr
    assert imgcls(*command("train", world, run), "--overwrite").returncode == 0
    assert (run / "my-notes.txt").read_text() == "kept"  # train --overwrite removes only the run's own files

    bundle = tmp_path / "bundle"
    assert imgcls(*command("export", world, bundle)).returncode == 0
    assert read_marker(bundle)["kind"] == "bundle"
    assert imgcls(*command("export", world, bundle)).returncode == 2
    (bundle / MARKER).unlink()  # a bundle from an imgcls that wrote no marker: recognised by its files
    replaced = imgcls(*command("export", world, bundle), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert read_marker(bundle)["kind"] == "bundle"

    digits = tmp_path / "digits"
    assert imgcls(*command("digits", world, digits)).returncode == 0
    assert read_marker(digits)["kind"] == "digits" and holds(digits, "digits")
    assert imgcls(*command("digits", world, digits)).returncode == 0  # its own dataset: rewritten in place

    scores = tmp_path / "scores.csv"
    assert imgcls(*command("score", world, scores)).returncode == 0
    first = scores.read_bytes()
    assert imgcls(*command("score", world, scores)).returncode == 2
    assert imgcls(*command("score", world, scores), "--overwrite").returncode == 0
    assert scores.read_bytes() == first


def test_scores_dataset_dir_is_marked_and_replaced_only_when_ours(tmp_path):
    from imgcls.service.scoring.dataset_dir import prepare_dataset_dir
    from imgcls.service.scoring.outputs import OutputError

    out = tmp_path / "scores"
    assert prepare_dataset_dir(out, 2, resume=False, overwrite=False) == []
    assert read_marker(out)["kind"] == "scores"
    import pyarrow.parquet as pq

    from imgcls.service.scoring.outputs import arrow_schema, columns

    pq.write_table(arrow_schema(columns(2)).empty_table(), out / "part-0.parquet")
    with pytest.raises(OutputError, match="already exists and holds a scores dataset directory"):
        prepare_dataset_dir(out, 2, resume=False, overwrite=False)
    assert prepare_dataset_dir(out, 2, resume=False, overwrite=True) == []
    assert not (out / "part-0.parquet").exists() and read_marker(out)["kind"] == "scores"
    other = tmp_path / "other"
    write_marker(other, "bundle")
    with pytest.raises(OutputError, match="holds a bundle written by imgcls export"):
        prepare_dataset_dir(other, 2, resume=False, overwrite=True)
    assert (other / MARKER).exists()


def test_stock_photos_folder_of_user_files_is_left_alone(tmp_path):
    from imgcls.stock_demo import write_photos

    (tmp_path / "stock-photos").mkdir()
    (tmp_path / "stock-photos" / "diary.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="stock-photos holds files imgcls did not write"):
        write_photos(tmp_path / "stock-photos")
    assert [p.name for p in (tmp_path / "stock-photos").iterdir()] == ["diary.txt"]
    shutil.rmtree(tmp_path / "stock-photos")


def test_score_evaluation_files_beside_out_are_replaced_only_when_ours(world, tmp_path):
    scores = tmp_path / "scores.csv"
    labelled = [*command("score", world, scores), "--labels", "imagefolder"]
    assert imgcls(*labelled).returncode == 0
    written = tree(tmp_path)
    assert {"scores.eval.json", "scores.confusion.png", "scores.reliability.png", "scores.coverage.png"} <= set(written)
    assert imgcls(*labelled, "--overwrite").returncode == 0  # its own evaluation: replaced
    (tmp_path / "scores.confusion.png").write_bytes((world / "user" / "photo.png").read_bytes())  # not ours
    before = tree(tmp_path)
    done = imgcls(*labelled, "--overwrite")
    assert done.returncode == 2 and tree(tmp_path) == before
    assert f"{tmp_path / 'scores.confusion.png'}, where the evaluation of --out {scores} goes" in done.stderr
