"""``imgcls score --engine ray`` on a real local Ray (one runtime for the module, 2 CPUs, no
dashboard): the same rows, failures, metrics and exit codes as the single-process scorer, a killed
actor that costs no row and duplicates none, and exit 2 naming the extra when Ray is missing."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_image_folder, make_tiny_bundle
from imgcls.service.scoring import cli as score
from imgcls.service.scoring.dataset_dir import read_scored_rows

BAD_FILES = {  # name -> (payload, reason); the JPEG is built in the fixture
    "cat/corrupt.jpg": "corrupt",
    "cat/truncated.jpg": "truncated",
    "dog/notes.jpg": "not_an_image",
    "owl/zero.png": "empty",
}


@pytest.fixture(scope="module")
def ray_runtime():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("score-ray"), train_steps=20)


@pytest.fixture(scope="module")
def mixed(bundle, tmp_path_factory) -> Path:
    """The tiny bundle's data plus corrupt, truncated, non-image and empty files."""
    folder = tmp_path_factory.mktemp("mixed") / "images"
    shutil.copytree(bundle.parents[1] / "data", folder)
    jpeg = encode(make_image(120, 90), "JPEG", quality=90)
    payloads = {"corrupt": jpeg[:200] + b"\0" * (len(jpeg) - 200), "truncated": jpeg[: len(jpeg) // 2],
                "not_an_image": b"these are notes, not pixels", "empty": b""}
    for name, reason in BAD_FILES.items():
        (folder / name).write_bytes(payloads[reason])
    return folder


def run_score(*args) -> int:
    return score.main([*map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def local_run(bundle, mixed, tmp_path_factory):
    """The single-process scorer's rows and evaluation: the reference."""
    out = tmp_path_factory.mktemp("local") / "scores.jsonl"  # floats kept exactly (CSV rounds to 7 digits)
    assert run_score(bundle, mixed, "--out", out, "--top-k", "2", "--labels", "imagefolder") == score.EXIT_PARTIAL
    return read_scored_rows(out, 2), json.loads(out.with_name("scores.eval.json").read_text())


def assert_same_rows(rows: list[dict], reference: list[dict]) -> None:
    assert [row["path"] for row in rows] == [row["path"] for row in reference]  # same paths, same order
    for row, expected in zip(rows, reference):
        assert (row["error"], row["message"]) == (expected["error"], expected["message"]), row["path"]
        assert (row["label_1"], row["label_2"]) == (expected["label_1"], expected["label_2"]), row["path"]
        for name in ("score_1", "score_2"):
            if expected[name] is None:
                assert row[name] is None
            else:
                assert row[name] == pytest.approx(expected[name], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("out_name", ["dataset", "scores.jsonl"])
def test_ray_rows_and_metrics_equal_the_single_process_scorer(ray_runtime, bundle, mixed, local_run, tmp_path,
                                                              out_name, capsys):
    reference, reference_eval = local_run
    assert {row["error"] for row in reference} == {None, *BAD_FILES.values()}
    capsys.readouterr()
    out = tmp_path / out_name
    code = run_score(bundle, mixed, "--out", out, "--top-k", "2", "--labels", "imagefolder", "--engine", "ray",
                     "--batch-size", "5")
    assert code == score.EXIT_PARTIAL  # some images failed: exit 3, as the local scorer
    rows = read_scored_rows(out, 2)
    if out.is_dir():  # Ray's workers wrote a Parquet dataset; its part files need not be in input order
        assert len(list(out.glob("*.parquet"))) >= 1
        rows.sort(key=lambda row: row["path"])
    assert_same_rows(rows, reference)
    evaluation = json.loads((tmp_path / f"{Path(out_name).stem}.eval.json").read_text())
    assert {k: v for k, v in evaluation.items() if k != "output"} == \
        {k: v for k, v in reference_eval.items() if k != "output"}
    text = capsys.readouterr().out
    scored = len(reference) - len(BAD_FILES)
    assert f"scored {scored}, failed {len(BAD_FILES)} (corrupt 1, empty 1, not_an_image 1, truncated 1)" in text
    assert "accuracy" in text


@pytest.mark.slow
def test_uri_inputs_are_read_by_ray_and_give_the_same_rows(ray_runtime, bundle, mixed, local_run, tmp_path):
    """A URI input (file:// here; s3:// and gs:// take the same path) is listed and read by Ray's
    read_binary_files, and the actors decode the bytes: the rows match the local scorer's."""
    out = tmp_path / "scores.jsonl"
    assert run_score(bundle, f"file://{mixed}", "--out", out, "--top-k", "2", "--engine", "ray") == score.EXIT_PARTIAL
    rows = sorted(read_scored_rows(out, 2), key=lambda row: row["path"])
    assert_same_rows(rows, sorted(local_run[0], key=lambda row: row["path"]))


def actor_pids() -> set[int]:
    """Live Ray actor processes of our scorer (Ray names them ray::MapWorker(MapBatches(ScoreActor)))."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::") and b"ScoreActor" in cmdline:
                pids.add(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_every_input_scored_exactly_once(ray_runtime, bundle, tmp_path):
    folder = make_image_folder(tmp_path / "many", per_class=300, size=(36, 36))
    expected = sorted(str(p) for p in folder.rglob("*.*"))
    out = tmp_path / "scores.csv"
    result: dict[str, int] = {}
    earlier = actor_pids()  # actors of earlier jobs that may still be exiting: not ours to kill
    job = threading.Thread(target=lambda: result.update(code=run_score(
        bundle, folder, "--out", out, "--engine", "ray", "--actors", "1", "--batch-size", "2")))
    job.start()
    deadline, victim = time.monotonic() + 90, None
    while time.monotonic() < deadline and job.is_alive():
        pids = actor_pids() - earlier
        if pids and out.exists() and out.read_bytes().count(b"\n") > 50:  # the actor is mid-job
            victim = pids.pop()
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.01)
    assert victim is not None, "the job finished (or never started an actor) before it could be killed"
    killed_mid_job = job.is_alive()
    written_at_kill = out.read_bytes().count(b"\n") - 1
    replacements = set()
    while job.is_alive():
        replacements |= actor_pids() - earlier - {victim}
        time.sleep(0.05)
    job.join()
    assert killed_mid_job and written_at_kill < len(expected)
    assert replacements, "no replacement actor was started"
    assert result["code"] == score.EXIT_OK
    counts = collections.Counter(row["path"] for row in read_scored_rows(out, 3))
    assert sorted(counts) == expected and set(counts.values()) == {1}


def test_actors_that_cannot_start_fail_the_job_with_exit_2_and_the_reason(ray_runtime, bundle, mixed, tmp_path,
                                                                           caplog):
    """No CUDA here: every actor's Predictor.load raises DeviceError; Ray gives up, we exit 2 saying why."""
    out = tmp_path / "scores.jsonl"
    assert run_score(bundle, mixed, "--out", out, "--engine", "ray", "--device", "cuda") == score.EXIT_ERROR
    message = [r.getMessage() for r in caplog.records if r.name == "imgcls.score" and r.levelname == "ERROR"]
    assert message and "the Ray job failed" in message[-1] and "DeviceError" in message[-1], message


def test_dataset_directory_refuses_to_clobber_and_resumes(ray_runtime, bundle, mixed, tmp_path, caplog):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("not ours")
    assert run_score(bundle, mixed, "--out", out, "--engine", "ray") == score.EXIT_ERROR
    assert run_score(bundle, mixed, "--out", out, "--engine", "ray", "--overwrite") == score.EXIT_ERROR
    assert (out / "notes.txt").exists()  # --overwrite never deletes what is not a Parquet part
    assert "holds files imgcls did not write as a scores dataset directory (notes.txt)" in caplog.text


def test_resume_of_a_dataset_directory_scores_only_the_missing_paths(ray_runtime, bundle, mixed, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert run_score(bundle, mixed / "cat", "--out", out, "--engine", "ray", "--top-k", "2") == score.EXIT_PARTIAL
    first = len(read_scored_rows(out, 2))
    capsys.readouterr()
    assert run_score(bundle, mixed, "--out", out, "--engine", "ray", "--top-k", "2", "--resume") == score.EXIT_PARTIAL
    counts = collections.Counter(row["path"] for row in read_scored_rows(out, 2))
    assert set(counts.values()) == {1} and len(counts) == len(list(mixed.rglob("*.*")))
    assert f"skipped {first} already in the output (2 of them failed earlier)" in capsys.readouterr().out


def test_without_ray_the_engine_exits_2_naming_the_extra(bundle, mixed, tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ray':\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n"
        "from imgcls.cli import main\n"
        f"sys.exit(main(['score', {str(bundle)!r}, {str(mixed)!r}, '--out', {str(tmp_path / 'o.csv')!r}, "
        "'--engine', 'ray']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "imgcls[ray]" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_ray_only_flags_need_the_ray_engine(bundle, mixed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        score.main([str(bundle), str(mixed), "--out", str(tmp_path / "o.csv"), "--actors", "2"])
    assert exit_info.value.code == 2 and "--engine ray" in capsys.readouterr().err
