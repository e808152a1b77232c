"""Classification figures from scored rows: accuracy, top-5, per-class precision/recall,
confusion matrix (PNG), expected calibration error. numpy only; matplotlib is imported lazily
inside the plotting function so the service never pays for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imgcls.models.core.calibration import ECE_BINS, expected_calibration_error
from imgcls.models.core.metrics import confusion_matrix

__all__ = ["ECE_BINS", "Evaluation", "confusion_matrix", "evaluate", "expected_calibration_error",
           "format_report", "save_confusion_png"]


@dataclass(frozen=True)
class Evaluation:
    class_names: tuple[str, ...]
    count: int  # labelled, scored images the figures are computed on
    accuracy: float
    top5_accuracy: float | None  # None when fewer than 5 (and fewer than all) labels were ranked
    ranked: int  # how many ranked labels per image were available for top-k accuracy
    precision: tuple[float | None, ...]  # per class: 0.0 never predicted, None absent from the labels
    recall: tuple[float | None, ...]  # per class: None where the class has no labelled images
    support: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class
    ece: float
    ece_bins: int = ECE_BINS

    @property
    def present(self) -> tuple[str, ...]:
        """Classes with at least one labelled image: the ones macro averages are taken over."""
        return tuple(name for name, support in zip(self.class_names, self.support) if support)

    @property
    def absent(self) -> tuple[str, ...]:
        """Classes of the model with no labelled image: no precision or recall, not 0."""
        return tuple(name for name, support in zip(self.class_names, self.support) if not support)

    @property
    def macro_precision(self) -> float:
        return float(np.mean([p for p in self.precision if p is not None]))

    @property
    def macro_recall(self) -> float:
        return float(np.mean([r for r in self.recall if r is not None]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "top5_accuracy": self.top5_accuracy,
            "ranked_labels_per_image": self.ranked,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_over": "classes present in the labels",
            "classes_present": len(self.present),
            "absent_classes": list(self.absent),
            "expected_calibration_error": self.ece,
            "ece_bins": self.ece_bins,
            "per_class": {
                name: {"precision": p, "recall": r, "support": s}
                for name, p, r, s in zip(self.class_names, self.precision, self.recall, self.support) if s
            },
            "class_names": list(self.class_names),
            "confusion_matrix": [list(row) for row in self.confusion],
        }




def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _present_only(values: np.ndarray, support: np.ndarray) -> tuple[float | None, ...]:
    return tuple(float(v) if n else None for v, n in zip(values, support))


def evaluate(
    true: Sequence[int], ranked: Sequence[Sequence[int]], confidence: Sequence[float],
    class_names: Sequence[str], bins: int = ECE_BINS,
) -> Evaluation:
    """``true[i]``: label index; ``ranked[i]``: predicted indices best first; ``confidence[i]``: top-1 score."""
    num_classes = len(class_names)
    true_array = np.asarray(true, dtype=np.int64)
    ranked_array = np.asarray(ranked, dtype=np.int64).reshape(len(true_array), -1)
    k = ranked_array.shape[1]
    if len(true_array) == 0 or k == 0:
        raise ValueError("evaluate: no labelled, scored images")
    predicted = ranked_array[:, 0]
    correct = predicted == true_array
    matrix = confusion_matrix(true_array, predicted, num_classes)
    diagonal = np.diag(matrix).astype(np.float64)
    top5 = None
    if k >= min(5, num_classes):
        top5 = float((ranked_array[:, :5] == true_array[:, None]).any(axis=1).mean())
    return Evaluation(
        class_names=tuple(class_names),
        count=int(len(true_array)),
        accuracy=float(correct.mean()),
        top5_accuracy=top5,
        ranked=int(k),
        precision=_present_only(_safe_ratio(diagonal, matrix.sum(axis=0)), matrix.sum(axis=1)),
        recall=_present_only(_safe_ratio(diagonal, matrix.sum(axis=1)), matrix.sum(axis=1)),
        support=tuple(int(v) for v in matrix.sum(axis=1)),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
        ece=expected_calibration_error(np.asarray(confidence), correct, bins),
        ece_bins=bins,
    )


def save_confusion_png(evaluation: Evaluation, path: str | Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised colours (recall), counts written in the cells when there are few classes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matrix = np.asarray(evaluation.confusion, dtype=np.float64)
    n = len(evaluation.class_names)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    figure, axes = plt.subplots(figsize=(side, side))
    try:
        image = axes.imshow(matrix / rows, cmap="Blues", vmin=0.0, vmax=1.0)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
        if n <= 50:
            axes.set_xticks(range(n), evaluation.class_names, rotation=90)
            axes.set_yticks(range(n), evaluation.class_names)
        if n <= 30:
            for (i, j), value in np.ndenumerate(matrix):
                if value:
                    colour = "white" if value / rows[i, 0] > 0.5 else "black"
                    axes.text(j, i, str(int(value)), ha="center", va="center", color=colour, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{title}\naccuracy {evaluation.accuracy:.3f} on {evaluation.count} images")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path


def format_report(evaluation: Evaluation) -> str:
    """A plain-text table for stdout."""
    top5 = "n/a" if evaluation.top5_accuracy is None else f"{evaluation.top5_accuracy:.4f}"
    lines = [
        f"images {evaluation.count}  accuracy {evaluation.accuracy:.4f}  top-5 {top5}  "
        f"ECE {evaluation.ece:.4f}  macro precision {evaluation.macro_precision:.4f}  "
        f"macro recall {evaluation.macro_recall:.4f} (over the {len(evaluation.present)} classes "
        "present in the labels)",
        f"{'class':<24} {'precision':>9} {'recall':>9} {'support':>8}",
    ]
    for name, p, r, s in zip(evaluation.class_names, evaluation.precision, evaluation.recall, evaluation.support):
        if s:
            lines.append(f"{name[:24]:<24} {p:>9.4f} {r:>9.4f} {s:>8d}")
    if evaluation.absent:
        shown = ", ".join(evaluation.absent[:20]) + (" ..." if len(evaluation.absent) > 20 else "")
        lines.append(f"absent from the labels (no precision/recall): {len(evaluation.absent)} class(es): {shown}")
    return "\n".join(lines)
