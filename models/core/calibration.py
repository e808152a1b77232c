"""Calibration of scores (numpy only): temperature scaling, ECE, NLL, reliability, coverage.

The one implementation used by training (fit after the last epoch), pretrained exports (fit on
labelled data when given), the predictor (``apply_temperature``: ``softmax(logits / T)``) and
``imgcls score --labels`` (ECE before/after, coverage/accuracy curve for abstention).

Temperature scaling divides the logits by one scalar ``T`` fitted to minimise the negative
log-likelihood of held-out labels. It never changes the ranking, so top-1 is unchanged.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
METHOD = "temperature scaling: 1-D golden-section search of the validation NLL over log T"
# The search interval of T: wide enough for any sane network, narrow enough to stay finite.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
SEARCH_STEPS = 80  # golden-section steps: the interval shrinks by 0.618^80 (< 1e-16 of log range)
log = logging.getLogger(__name__)


def softmax(logits: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Row-wise softmax computed in ``dtype`` (float64 for fitting; the predictor serves float32),
    stable for any finite logits (the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=dtype)
    shifted = z - z.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(dtype, copy=False)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by ``temperature`` (returned unchanged, same object, when it is 1.0)."""
    if temperature == 1.0:
        return logits
    return logits / np.asarray(temperature, dtype=logits.dtype)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean −log softmax(logits / T)[label] (natural log)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in [0.01, 100] minimising the NLL of ``labels`` (NLL is unimodal in log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature: need logits [N, C] and N labels, got {logits.shape} and {labels.shape}")
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = (negative_log_likelihood(logits, labels, math.exp(x)) for x in (a, b))
    for _ in range(SEARCH_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(logits, labels, math.exp(b))
    return float(math.exp((low + high) / 2.0))


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over equal-width bins (lo, hi] of |bin| / n * |accuracy(bin) - mean confidence(bin)|."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    index = _bin_index(confidence, bins)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per non-empty bin: its range, image count, mean confidence and accuracy (the diagram's data)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = _bin_index(confidence, bins)
    rows = []
    for b in range(bins):
        members = index == b
        if members.any():
            rows.append({"low": b / bins, "high": (b + 1) / bins, "count": int(members.sum()),
                         "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())})
    return rows


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL of ``logits`` before (T = 1) and after dividing them by ``temperature``."""
    labels = np.asarray(labels, dtype=np.int64)
    correct = np.asarray(logits).argmax(1) == labels
    before = softmax(logits).max(1)
    after = softmax(np.asarray(logits, dtype=np.float64) / temperature).max(1)
    return {
        "ece_before": expected_calibration_error(before, correct),
        "ece_after": expected_calibration_error(after, correct),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
    }


def fit_calibration(logits: np.ndarray, labels: np.ndarray, fitted_on: str) -> dict[str, Any]:
    """The card's ``calibration`` section: T, how and on what it was fitted, figures before/after."""
    temperature = fit_temperature(logits, labels)
    figures = calibration_figures(logits, labels, temperature)
    section = {"temperature": temperature, "method": METHOD, "fitted_on": fitted_on, "images": int(len(labels)),
               "ece_bins": ECE_BINS, **{k: round(v, 6) for k, v in figures.items()}}
    bound = next((b for b in (MIN_TEMPERATURE, MAX_TEMPERATURE) if abs(math.log(temperature / b)) < 1e-3), None)
    if bound is not None:  # the NLL still fell at the edge: the fit says "more", not "this much"
        section["hit_search_bound"] = bound
        why = ("the model is mostly wrong on these labels" if bound == MAX_TEMPERATURE
               else "every image is predicted right by a wide margin: too few or too easy images")
        log.warning("calibration: the temperature fit on %s hit its search bound (T = %g, searched %g..%g): %s; "
                    "T is the bound, not a fitted value", fitted_on, bound, MIN_TEMPERATURE, MAX_TEMPERATURE, why)
    return section


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z) from calibrated ``softmax(z / T)`` rows: proportional to p ** T (exact up to rounding)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.log(np.maximum(p, 1e-300)), -np.inf)
    return softmax(temperature * logp)


def abstains(score: float, min_score: float | None) -> bool:
    """A prediction whose top-1 score is below ``min_score`` is reported as abstained."""
    return min_score is not None and score < min_score


def effective_min_score(override: float | None, default: float | None) -> float | None:
    """The caller's threshold, else the card's default; 0 (or none) means never abstain."""
    value = override if override is not None else default
    return value or None


def check_min_score(value: Any, what: str = "min_score") -> float:
    """A number in [0, 1] (bool refused), or ``ValueError`` saying what it got."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0 \
            or math.isnan(float(value)):
        raise ValueError(f"{what} must be a number between 0 and 1, got {str(value)[:40]!r}")
    return float(value)


def coverage_curve(confidence: Sequence[float], correct: Sequence[bool], points: int = 21) -> list[dict[str, float]]:
    """Per threshold t in 0, 1/(points-1), .., 1: coverage (share with score >= t) and accuracy on those."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    rows = []
    for threshold in np.linspace(0.0, 1.0, points):
        kept = confidence >= threshold
        rows.append({"min_score": round(float(threshold), 6), "coverage": float(kept.mean()) if kept.size else 0.0,
                     "accuracy": float(correct[kept].mean()) if kept.any() else None})
    return rows
