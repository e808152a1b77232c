"""Calibration and abstention figures of ``imgcls score --labels`` (numpy; plots are lazy).

From the scored rows: ECE of the served (calibrated) scores and of the uncalibrated softmax beside
it, the reliability bins of both, and, for abstention, coverage and accuracy at the run's
``min_score`` plus a coverage/accuracy curve over thresholds so users can pick one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imgcls.models.core.calibration import coverage_curve, expected_calibration_error, reliability_bins
from imgcls.models.core.calibration_plots import save_coverage_png, save_reliability_png


@dataclass(frozen=True)
class Trust:
    temperature: float
    ece: float  # of the scores served (after calibration)
    ece_uncalibrated: float | None  # None when the rows lack uncalibrated scores (older outputs)
    reliability: tuple[dict[str, Any], ...]
    reliability_uncalibrated: tuple[dict[str, Any], ...]
    min_score: float | None
    abstained: int
    coverage: float  # share of the images answered (not abstained)
    accuracy_answered: float | None  # accuracy on the answered images (None: all abstained)
    curve: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "expected_calibration_error": self.ece,
            "expected_calibration_error_uncalibrated": self.ece_uncalibrated,
            "reliability": list(self.reliability),
            "reliability_uncalibrated": list(self.reliability_uncalibrated),
            "abstention": {"min_score": self.min_score, "abstained": self.abstained, "coverage": self.coverage,
                           "accuracy_answered": self.accuracy_answered},
            "coverage_curve": list(self.curve),
        }


def evaluate_trust(correct: Sequence[bool], confidence: Sequence[float], uncalibrated: Sequence[float | None],
                   temperature: float, min_score: float | None) -> Trust:
    correct_array = np.asarray(correct, dtype=bool)
    scores = np.asarray(confidence, dtype=np.float64)
    raw = None if any(v is None for v in uncalibrated) else np.asarray(uncalibrated, dtype=np.float64)
    answered = scores >= min_score if min_score is not None else np.ones(len(scores), dtype=bool)
    return Trust(
        temperature=temperature,
        ece=expected_calibration_error(scores, correct_array),
        ece_uncalibrated=None if raw is None else expected_calibration_error(raw, correct_array),
        reliability=tuple(reliability_bins(scores, correct_array)),
        reliability_uncalibrated=() if raw is None else tuple(reliability_bins(raw, correct_array)),
        min_score=min_score,
        abstained=int((~answered).sum()),
        coverage=float(answered.mean()),
        accuracy_answered=float(correct_array[answered].mean()) if answered.any() else None,
        curve=tuple(coverage_curve(scores, correct_array)),
    )


def save_trust_pngs(trust: Trust, reliability_path: Path, coverage_path: Path, name: str) -> None:
    curves = {f"served (T={trust.temperature:.3g}, ECE {trust.ece:.3f})": trust.reliability}
    if trust.ece_uncalibrated is not None:
        curves = {f"uncalibrated (T=1, ECE {trust.ece_uncalibrated:.3f})": trust.reliability_uncalibrated, **curves}
    save_reliability_png(curves, reliability_path, f"Reliability: {name}")
    save_coverage_png(trust.curve, coverage_path, f"Coverage vs accuracy: {name}", trust.min_score)


def format_trust(trust: Trust) -> str:
    before = "n/a" if trust.ece_uncalibrated is None else f"{trust.ece_uncalibrated:.4f}"
    line = f"calibration: ECE {trust.ece:.4f} (uncalibrated {before}, temperature {trust.temperature:.4g})"
    if trust.min_score is None:
        return line + "\nabstention: off (pass --min-score to abstain below a score)"
    accuracy = "n/a" if trust.accuracy_answered is None else f"{trust.accuracy_answered:.4f}"
    return (line + f"\nabstention at min_score {trust.min_score:g}: coverage {trust.coverage:.4f} "
            f"({trust.abstained} abstained), accuracy of answered {accuracy}")
