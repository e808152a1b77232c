"""PNG plots of a run: loss/accuracy curves per epoch and the validation confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
# The Agg backend's compiled module loads here, not at the first figure: the plots are drawn after the
# last epoch's state is saved, where a Ctrl-C must stop the run (exit 130); a KeyboardInterrupt inside
# an extension module's initialisation surfaces as an ImportError instead.
import matplotlib.backends.backend_agg  # noqa: E402,F401
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from imgcls.models.core.atomic import write_atomically  # noqa: E402


def _save(figure: Any, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path, best_epoch: int | None = None) -> Path:
    """Train/val loss and accuracy per epoch (``records`` are metrics.jsonl lines)."""
    epochs = [r["epoch"] for r in records]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((loss_axis, "loss", "loss"), (acc_axis, "accuracy", "accuracy")):
        axis.plot(epochs, [r[f"train_{key}"] for r in records], marker="o", label="train")
        axis.plot(epochs, [r[f"val_{key}"] for r in records], marker="o", label="validation")
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, Path(path))


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axis.set_xticks(list(ticks), labels=list(class_names), rotation=90 if len(class_names) > 8 else 0)
    axis.set_yticks(list(ticks), labels=list(class_names))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    if len(class_names) <= 30:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    axis.text(j, i, str(count), ha="center", va="center", fontsize=8,
                              color="white" if count > peak / 2 else "black")
    return _save(figure, Path(path))
