"""Scoring parts that need no model: input listing, shards, crash-safe outputs, evaluation maths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imgcls.service.scoring.evaluation import evaluate, expected_calibration_error, save_confusion_png
from imgcls.service.scoring.inputs import InputError, labels_from_csv, list_inputs, parse_shard, shard
from imgcls.service.scoring.outputs import OutputError, columns, open_output, read_rows


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_directories_globs_and_list_files(tmp_path):
    a = _touch(tmp_path / "d" / "x" / "a.JPG")
    b = _touch(tmp_path / "d" / "b.png")
    _touch(tmp_path / "d" / ".hidden.png")
    _touch(tmp_path / "d" / ".cache" / "c.png")
    _touch(tmp_path / "d" / "notes.md")
    e = _touch(tmp_path / "e" / "e.webp")
    (tmp_path / "list.txt").write_text("# images\nd/b.png\n\n" + e + "\nmissing.jpg\n")
    (tmp_path / "list.csv").write_text("path,label\nd/x/a.JPG,cat\n")

    listing = list_inputs([str(tmp_path / "d")])
    assert listing.paths == tuple(sorted([a, b])) and listing.skipped == 1
    assert list_inputs([str(tmp_path / "d")], all_files=True).paths == tuple(sorted([a, b, str(tmp_path / "d" / "notes.md")]))
    assert list_inputs([str(tmp_path / "**" / "*.webp")]).paths == (e,)
    listed = list_inputs([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), b]).paths
    assert listed == tuple(sorted([a, b, e, str(tmp_path / "missing.jpg")]))
    with pytest.raises(InputError, match="does not exist"):
        list_inputs([str(tmp_path / "nope")])
    with pytest.raises(InputError, match="matches no files"):
        list_inputs([str(tmp_path / "*.gif")])


def test_shards_partition_the_sorted_list():
    paths = tuple(f"img_{i:03d}.jpg" for i in range(10))
    shards = [shard(paths, i, 3) for i in (1, 2, 3)]
    assert sorted(p for s in shards for p in s) == list(paths)
    assert all(not set(x) & set(y) for x in shards for y in shards if x is not y)
    assert shards[0] == shard(paths, 1, 3) and shards[0][:2] == ("img_000.jpg", "img_003.jpg")
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_labels_csv_paths_are_relative_to_the_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.csv").write_text("path,label\nimgs/a.png,cat\n/abs/b.png,dog\n")
    labels = labels_from_csv(str(tmp_path / "sub" / "labels.csv"))
    assert labels == {str(tmp_path / "sub" / "imgs" / "a.png"): "cat", "/abs/b.png": "dog"}
    (tmp_path / "bad.csv").write_text("path,kind\na.png,cat\n")
    with pytest.raises(InputError, match="label"):
        labels_from_csv(str(tmp_path / "bad.csv"))


ROWS = [
    {"path": "a,1.jpg", "label_1": "cat", "score_1": 0.75, "label_2": "dog", "score_2": 0.25, "error": None, "message": None},
    {"path": "b.jpg", "error": "truncated", "message": "image data ends early"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_output_round_trip_resume_and_refusals(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = open_output(out, 2, resume=False, overwrite=False)
    writer.write(ROWS[:1])
    writer.write(ROWS[1:])
    writer.finish()
    rows = read_rows(out, 2)
    assert [r["path"] for r in rows] == ["a,1.jpg", "b.jpg"]
    assert rows[0]["label_2"] == "dog" and rows[0]["score_1"] == pytest.approx(0.75)
    assert rows[1]["error"] == "truncated" and rows[1]["label_1"] is None
    with pytest.raises(OutputError, match="already exists"):
        open_output(out, 2, resume=False, overwrite=False)
    with pytest.raises(OutputError, match="columns|keys"):
        open_output(out, 3, resume=True, overwrite=False)
    resumed = open_output(out, 2, resume=True, overwrite=False)
    assert [r["path"] for r in resumed.existing] == ["a,1.jpg", "b.jpg"]
    resumed.write([{**ROWS[0], "path": "c.jpg"}])
    resumed.finish()
    assert [r["path"] for r in read_rows(out, 2)] == ["a,1.jpg", "b.jpg", "c.jpg"]
    replaced = open_output(out, 2, resume=False, overwrite=True)
    assert replaced.existing == []
    replaced.finish()
    assert read_rows(out, 2) == []


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_cuts_a_torn_last_line(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = open_output(out, 2, resume=False, overwrite=False)
    writer.write(ROWS)
    writer.close()
    intact = out.read_bytes()
    with open(out, "ab") as handle:
        handle.write(b'{"path": "half' if suffix == ".jsonl" else b"c.jpg,cat,0.5")
    resumed = open_output(out, 2, resume=True, overwrite=False)
    assert [r["path"] for r in resumed.existing] == ["a,1.jpg", "b.jpg"]
    resumed.close()
    assert out.read_bytes() == intact


def test_parquet_unfinished_parts_are_resumed(tmp_path):
    out = tmp_path / "scores.parquet"
    writer = open_output(out, 2, resume=False, overwrite=False)
    writer.write(ROWS)
    writer.close()  # killed before finish(): only part files exist
    assert not out.exists() and any((tmp_path / "scores.parquet.parts").iterdir())
    with pytest.raises(OutputError, match="already exists"):
        open_output(out, 2, resume=False, overwrite=False)
    resumed = open_output(out, 2, resume=True, overwrite=False)
    assert {r["path"] for r in resumed.existing} == {"a,1.jpg", "b.jpg"}
    resumed.finish()
    assert len(read_rows(out, 2)) == 2 and not (tmp_path / "scores.parquet.parts").exists()


def test_columns():
    assert columns(2) == ["path", "label_1", "score_1", "label_2", "score_2", "error", "message", "abstained",
                          "uncalibrated_score_1", "model_version", "precision"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_every_row_names_its_model_and_resume_refuses_another_model(tmp_path, suffix):
    out = tmp_path / f"scores.{suffix}"
    first = {"model_version": "a@111111111111", "precision": "fp32"}
    writer = open_output(out, 1, resume=False, overwrite=False, provenance=first)
    writer.write([{"path": "x.jpg", "label_1": "cat", "score_1": 0.9}])
    writer.finish()
    assert [{k: r[k] for k in first} for r in read_rows(out, 1)] == [first]
    for other in ({"model_version": "b@222222222222", "precision": "fp32"},
                  {"model_version": "a@111111111111", "precision": "int8"}):
        with pytest.raises(OutputError) as refused:
            open_output(out, 1, resume=True, overwrite=False, provenance=other)
        message = str(refused.value)
        assert all(str(v) in message for v in (*first.values(), *other.values()))  # names both
    resumed = open_output(out, 1, resume=True, overwrite=False, provenance=first)  # the same model resumes
    assert [r["path"] for r in resumed.existing] == ["x.jpg"]
    resumed.write([{"path": "y.jpg", "label_1": "dog", "score_1": 0.8}])
    resumed.finish()
    assert [r["model_version"] for r in read_rows(out, 1)] == ["a@111111111111"] * 2


def test_evaluation_against_a_hand_computed_case(tmp_path):
    # true:      a a b b c c       top-1: a b b b a c       -> confusion [[1,1,0],[0,2,0],[1,0,1]]
    true = [0, 0, 1, 1, 2, 2]
    ranked = [[0, 1, 2], [1, 0, 2], [1, 2, 0], [1, 0, 2], [0, 1, 2], [2, 1, 0]]
    confidence = [0.9, 0.7, 0.5, 0.45, 0.95, 0.3]
    result = evaluate(true, ranked, confidence, ("a", "b", "c"), bins=5)
    assert result.confusion == ((1, 1, 0), (0, 2, 0), (1, 0, 1))
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.precision == pytest.approx((1 / 2, 2 / 3, 1.0))
    assert result.recall == pytest.approx((1 / 2, 1.0, 1 / 2))
    assert result.support == (2, 2, 2)
    assert result.top5_accuracy == 1.0  # all 3 classes are ranked
    # bins of width 0.2: (0.8,1]: {0.9 ok, 0.95 wrong} -> |0.5-0.925|; (0.6,0.8]: {0.7 wrong} -> 0.7;
    # (0.4,0.6]: {0.5 ok, 0.45 ok} -> |1-0.475|; (0.2,0.4]: {0.3 ok} -> 0.7
    assert result.ece == pytest.approx((2 * 0.425 + 0.7 + 2 * 0.525 + 0.7) / 6)
    top2 = evaluate(true, [r[:2] for r in ranked], confidence, ("a", "b", "c"), bins=5)
    assert top2.top5_accuracy is None  # 2 ranked labels of 3 classes cannot give a top-5 figure
    data = json.loads(json.dumps(result.to_dict()))
    assert data["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    png = save_confusion_png(result, tmp_path / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_macro_averages_only_classes_present_in_the_labels():
    names = tuple("abcdefghij")  # a 10-class model, 3 classes in the labels, every image right
    true = [0, 0, 1, 2]
    ranked = [[0, 1], [0, 2], [1, 0], [2, 0]]
    result = evaluate(true, ranked, [0.9] * 4, names)
    assert result.accuracy == 1.0
    assert result.macro_precision == 1.0 and result.macro_recall == 1.0  # not 0.3 (3 of 10 classes)
    assert result.absent == tuple("defghij") and result.precision[3] is None and result.recall[9] is None
    data = result.to_dict()
    assert data["absent_classes"] == list("defghij") and sorted(data["per_class"]) == ["a", "b", "c"]
    assert data["macro_over"] == "classes present in the labels"
    from imgcls.service.scoring.evaluation import format_report

    assert "absent from the labels" in format_report(result) and "over the 3 classes" in format_report(result)


def test_top5_accuracy_counts_hits_in_the_first_five():
    names = tuple("abcdefg")
    ranked = [[1, 2, 3, 4, 0, 5, 6], [1, 2, 3, 4, 5, 0, 6]]
    result = evaluate([0, 0], ranked, [0.5, 0.5], names)
    assert result.top5_accuracy == 0.5 and result.accuracy == 0.0


def test_ece_is_zero_when_confidence_matches_accuracy():
    confidence = np.array([0.75] * 4)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0]), np.array([0])) == pytest.approx(1.0)


def test_only_txt_and_csv_are_lists_by_name_and_list_reads_any_name(tmp_path):
    image = _touch(tmp_path / "a.png")
    notes = tmp_path / "notes.lst"
    notes.write_text("a.png\n")
    assert list_inputs([str(notes)]).paths == (str(notes),)  # scored as a file (not_an_image), not read as paths
    assert list_inputs([], lists=[str(notes)]).paths == (image,)
    with pytest.raises(InputError, match="--list"):
        list_inputs([], lists=[str(tmp_path / "none.lst")])
