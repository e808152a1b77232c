"""What every ``imgcls score`` engine shares about its results: the row of one image, the tally of
scored and failed images, the final summary line and the exit status.

The single-process scorer (``cli``) and the Ray engine (``ray_score``) both build rows with
``to_row`` and finish with ``summary``/``exit_status``, so their outputs and exit codes cannot drift.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.models.core.calibration import abstains
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.service.prediction import Prediction
from imgcls.service.scoring.outputs import ABSTAINED, UNCALIBRATED, Row

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 2, 3, 130


@dataclass
class Tally:
    scored: int = 0
    failed: int = 0
    abstained: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def add(self, row: Row) -> None:
        """Count one written row (its ``error`` and ``abstained`` columns)."""
        if row.get("error"):
            self.failed += 1
            self.reasons[row["error"]] += 1
        else:
            self.scored += 1
            self.abstained += bool(row.get(ABSTAINED))


def to_row(path: str, result: list[Prediction] | ImageDecodeError, min_score: float | None = None) -> Row:
    if isinstance(result, ImageDecodeError):
        return {"path": path, "error": result.reason, "message": result.message}
    row: Row = {"path": path, "error": None, "message": None, ABSTAINED: abstains(result[0].score, min_score),
                UNCALIBRATED: result[0].uncalibrated_score}
    for rank, prediction in enumerate(result, start=1):
        row[f"label_{rank}"] = prediction.label
        row[f"score_{rank}"] = prediction.score
    return row


def summary(tally: Tally, skipped: int, seconds: float, out: Path, earlier_failed: int) -> str:
    rate = tally.scored / seconds if seconds > 0 else 0.0
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(tally.reasons.items()))
    text = f"scored {tally.scored}, failed {tally.failed}"
    text += f" ({reasons})" if reasons else ""
    text += f", abstained {tally.abstained}" if tally.abstained else ""
    text += f", skipped {skipped} already in the output" if skipped else ""
    text += f" ({earlier_failed} of them failed earlier)" if earlier_failed else ""
    return text + f"; {seconds:.1f} s, {rate:.1f} img/s -> {out}"


def exit_status(tally: Tally, earlier_failed: int) -> int:
    return EXIT_PARTIAL if tally.failed or earlier_failed else EXIT_OK
