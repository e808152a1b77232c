"""``imgcls score --labels``: evaluate the exported model on scored rows, through the server's path.

Writes ``<out>.eval.json``, ``<out>.confusion.png``, ``<out>.reliability.png`` (calibration
before/after the card's temperature) and ``<out>.coverage.png`` (accuracy vs coverage over
abstention thresholds) beside the output and returns the text report for stdout.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from imgcls.models.core.atomic import write_atomically
from imgcls.service.scoring.evaluation import Evaluation, evaluate, format_report, save_confusion_png
from imgcls.service.scoring.inputs import labels_from_csv, labels_from_folders
from imgcls.service.scoring.dataset_dir import read_scored_rows
from imgcls.service.scoring.outputs import UNCALIBRATED, OutputError, Row
from imgcls.service.scoring.trust import evaluate_trust, format_trust, save_trust_pngs

log = logging.getLogger("imgcls.score")


def load_labels(spec: str, paths: Sequence[str]) -> dict[str, str]:
    """path -> label, keyed by absolute path: 'imagefolder' (parent folder name) or a CSV file."""
    if spec == "imagefolder":
        labels = labels_from_folders(paths)
    else:
        labels = labels_from_csv(spec)
    return {os.path.abspath(path): label for path, label in labels.items()}


def report_paths(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".eval.json"), stem.with_name(stem.name + ".confusion.png")


def trust_paths(out: str | Path) -> tuple[Path, Path]:
    """``<stem>.reliability.png`` and ``<stem>.coverage.png`` beside the confusion matrix."""
    stem = Path(out).with_suffix("")
    return stem.with_name(stem.name + ".reliability.png"), stem.with_name(stem.name + ".coverage.png")


def _written_by_score(path: Path) -> bool:
    """An evaluation file of ``imgcls score``: its JSON report, or a PNG matplotlib drew."""
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(record, dict) and {"accuracy", "per_class"} <= set(record)
        from PIL import Image

        with Image.open(path) as image:
            return str(getattr(image, "text", {}).get("Software", "")).startswith("Matplotlib")
    except Exception:  # unreadable, not JSON, not an image
        return False


def check_report_files(out: str | Path) -> None:
    """Before scoring: evaluation files already beside ``out`` are replaced only when imgcls score wrote them."""
    for path in (*report_paths(out), *trust_paths(out)):
        if path.exists() and not _written_by_score(path):
            raise OutputError(f"{path}, where the evaluation of --out {out} goes, was not written by imgcls score; "
                              "it is left untouched: choose another --out")


def labelled_arrays(
    rows: Sequence[Row], k: int, labels: Mapping[str, str], class_names: Sequence[str],
    uncalibrated: list[float | None] | None = None,
) -> tuple[list[int], list[list[int]], list[float], dict[str, int]]:
    """(true indices, ranked predicted indices, top-1 scores, counts of rows left out and why).

    ``uncalibrated``, when given, receives each kept row's uncalibrated top-1 score (or None).
    """
    index = {name: i for i, name in enumerate(class_names)}
    true, ranked, confidence = [], [], []
    left_out = {"failed": 0, "unlabelled": 0, "unknown_label": 0}
    for row in rows:
        label = labels.get(os.path.abspath(row["path"]))
        if row.get("error"):
            left_out["failed"] += 1
        elif label is None:
            left_out["unlabelled"] += 1
        elif label not in index:
            left_out["unknown_label"] += 1
        else:
            true.append(index[label])
            ranked.append([index[row[f"label_{j}"]] for j in range(1, k + 1)])
            confidence.append(float(row["score_1"]))
            if uncalibrated is not None:
                uncalibrated.append(row.get(UNCALIBRATED))
    return true, ranked, confidence, left_out


def unknown_labels(rows: Sequence[Row], labels: Mapping[str, str], class_names: Sequence[str]) -> str:
    """The labels of scored rows that name no class of the model, most frequent first: 'x (3), y (1)'."""
    known = set(class_names)
    counts = Counter(label for row in rows if not row.get("error")
                     for label in [labels.get(os.path.abspath(row["path"]))] if label is not None and label not in known)
    shown = ", ".join(f"{label!r} ({n})" for label, n in counts.most_common(10))
    return shown + (f" and {len(counts) - 10} more" if len(counts) > 10 else "")


def evaluate_output(out: str | Path, k: int, labels: Mapping[str, str], class_names: Sequence[str],
                    temperature: float = 1.0, min_score: float | None = None, trained: int = 0) -> str:
    """The evaluation of ``out``'s labelled rows (files beside it) as text; ``trained``: how many scored
    images the model was trained on (recorded in the JSON)."""
    rows = read_scored_rows(out, k)
    raw: list[float | None] = []
    true, ranked, confidence, left_out = labelled_arrays(rows, k, labels, class_names, raw)
    if not true and left_out["unknown_label"]:
        message = (f"no labelled, scored images: their labels match no class of this model: "
                   f"{unknown_labels(rows, labels, class_names)}; the model's classes: {', '.join(class_names[:20])}"
                   + (" ..." if len(class_names) > 20 else ""))
        log.warning("%s", message)
        return f"evaluation: {message}"
    if left_out["unknown_label"]:
        log.warning("%d image(s) have labels that are not classes of this model, left out: %s",
                    left_out["unknown_label"], unknown_labels(rows, labels, class_names))
    if not true:
        log.warning("no labelled, scored images to evaluate (%s)", left_out)
        return "evaluation: no labelled, scored images"
    evaluation: Evaluation = evaluate(true, ranked, confidence, class_names)
    correct = [r[0] == t for r, t in zip(ranked, true)]
    trust = evaluate_trust(correct, confidence, raw, temperature, min_score)
    json_path, png_path = report_paths(out)
    reliability_png, coverage_png = trust_paths(out)
    payload = {**evaluation.to_dict(), **trust.to_dict(), "left_out": left_out, "training_images_scored": trained,
               "output": str(out)}
    write_atomically(json_path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    save_confusion_png(evaluation, png_path, title=f"Confusion matrix: {Path(out).name}")
    save_trust_pngs(trust, reliability_png, coverage_png, Path(out).name)
    log.info("evaluation written to %s, %s, %s and %s", json_path, png_path, reliability_png, coverage_png)
    return format_report(evaluation) + "\n" + format_trust(trust)
