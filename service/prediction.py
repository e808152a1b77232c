"""The one prediction type (label, index, score) and the top-k order: the predictor's answers, served
by the API.

The standard library only at import (NumPy when top-k is computed), so the HTTP schemas and the OIP
encoder use them without NumPy or ONNX Runtime: BentoML's arbiter imports the service module only to
read its configuration (``tests/test_arbiter_imports.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # NumPy loads where arrays are made: BentoML's arbiter imports this module without it
    import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    index: int
    score: float  # calibrated: softmax(logits / card temperature)
    uncalibrated_score: float | None = None  # softmax(logits), for before/after calibration figures

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries (clamped to the row length), best first, ties by index."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    import numpy as np

    row = np.asarray(probabilities)
    k = min(k, row.shape[-1])
    return np.argsort(-row, kind="stable")[:k]
