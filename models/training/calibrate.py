"""Temperature scaling of a fine-tuned model on its validation split (after training, on the best epoch).

The fit itself is ``imgcls.models.core.calibration`` (numpy, shared with exports and scoring);
this module feeds it the best epoch's validation logits and draws the reliability diagram that
training writes beside ``confusion.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.models.core.calibration import fit_calibration, reliability_bins, softmax
from imgcls.models.core.calibration_plots import save_reliability_png

log = logging.getLogger(__name__)
RELIABILITY_FILENAME = "reliability.png"


def calibrate_validation(logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> dict[str, Any] | None:
    """``{"calibration": card section, "reliability": {"before": bins, "after": bins}}``, None without images."""
    z = logits.detach().float().cpu().numpy().astype(np.float64)
    y = labels.detach().cpu().numpy().astype(np.int64)
    if len(y) == 0:
        log.warning("no validation images: the model stays uncalibrated (temperature 1.0)")
        return None
    section = fit_calibration(z, y, f"validation split (split.json val), epoch {epoch}")
    correct = z.argmax(1) == y
    before = reliability_bins(softmax(z).max(1), correct)
    after = reliability_bins(softmax(z / section["temperature"]).max(1), correct)
    log.info("calibration: temperature %.4f on %d validation images; ECE %.4f -> %.4f, NLL %.4f -> %.4f",
             section["temperature"], len(y), section["ece_before"], section["ece_after"],
             section["nll_before"], section["nll_after"])
    return {"calibration": section, "reliability": {"before": before, "after": after}}


def plot_reliability(report: dict[str, Any], path: Path) -> Path | None:
    """The reliability diagram of ``val_report.json`` (before/after temperature), if it was calibrated."""
    fitted = report.get("calibration")
    if not fitted:
        return None
    bins = report["reliability"]
    curves = {f"uncalibrated (ECE {fitted['ece_before']:.3f})": bins["before"],
              f"T = {fitted['temperature']:.3g} (ECE {fitted['ece_after']:.3f})": bins["after"]}
    return save_reliability_png(curves, path, f"validation, epoch {report['epoch']}: reliability")
