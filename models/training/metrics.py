"""Validation metrics from logits: accuracy, loss, confusion matrix, per-class precision/recall."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from imgcls.models.core.metrics import confusion_matrix


def per_class_report(matrix: list[list[int]], class_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    report: dict[str, dict[str, float | int]] = {}
    for index, name in enumerate(class_names):
        true_positive = matrix[index][index]
        support = sum(matrix[index])
        predicted = sum(row[index] for row in matrix)
        report[name] = {
            "precision": round(true_positive / predicted, 6) if predicted else 0.0,
            "recall": round(true_positive / support, 6) if support else 0.0,
            "support": support,
        }
    return report


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Plain-JSON metrics of one validation pass."""
    predictions = logits.argmax(dim=1)
    loss = nn.functional.cross_entropy(logits, labels)
    matrix = confusion_matrix(labels.cpu().numpy(), predictions.cpu().numpy(), len(class_names)).tolist()
    per_class = per_class_report(matrix, class_names)
    recalls = [v["recall"] for v in per_class.values()]
    return {
        "val_accuracy": round(float((predictions == labels).float().mean()), 6),
        "val_loss": round(float(loss), 6),
        "val_balanced_accuracy": round(sum(recalls) / len(recalls), 6),
        "val_images": int(labels.numel()),
        "per_class": per_class,
        "confusion": matrix,
    }
