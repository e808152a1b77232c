"""PNG plots of calibration: reliability diagram (before/after temperature) and coverage/accuracy.

matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
Used by training (beside confusion.png) and by ``imgcls score --labels`` (beside its confusion PNG).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgcls.models.core.atomic import write_atomically


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, figure: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    try:
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    path = Path(path)
    write_atomically(path, buffer.getvalue())
    return path


def save_reliability_png(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str) -> Path:
    """Accuracy vs mean confidence per bin (``calibration.reliability_bins`` rows), one line per curve.

    ``curves`` maps a legend label (e.g. "before (T=1, ECE 0.16)") to its bins; the diagonal is perfect calibration.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5.5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for (label, bins), marker in zip(curves.items(), "os^v"):
        axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker, label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("mean top-1 score in bin")
    axis.set_ylabel("accuracy in bin")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    return _save(plt, figure, path)


def save_coverage_png(curve: Sequence[Mapping[str, Any]], path: str | Path, title: str,
                      min_score: float | None = None) -> Path:
    """Coverage and accuracy of the answered images as the abstention threshold ``min_score`` rises."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    thresholds = [p["min_score"] for p in curve]
    axis.plot(thresholds, [p["coverage"] for p in curve], marker="o", label="coverage (answered share)")
    axis.plot(thresholds, [p["accuracy"] if p["accuracy"] is not None else float("nan") for p in curve],
              marker="s", label="accuracy of answered")
    if min_score is not None:
        axis.axvline(min_score, color="grey", linestyle="--", linewidth=1, label=f"min_score {min_score:g}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("min_score (abstain below)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    return _save(plt, figure, path)
