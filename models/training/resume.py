"""The resume-only file ``runs/<run>/train_state.pt``: everything needed to continue after the last
completed epoch (model, optimiser, scheduler, AMP scaler, RNG states, early-stopping counters,
the config). Only plain types and tensors, written atomically, read with ``weights_only=True``.
Export never reads it.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.models.core.atomic import write_atomically

TRAIN_STATE_FILENAME = "train_state.pt"
TRAIN_STATE_VERSION = 1


class ResumeError(ValueError):
    """A run that cannot be resumed; the message says why."""


@dataclass
class Progress:
    """Where training stands after ``completed_epochs`` epochs."""

    completed_epochs: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    skipped_unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(run_dir: str | Path, *, config: dict[str, Any], progress: Progress, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> Path:
    state = {
        "version": TRAIN_STATE_VERSION,
        "config": config,
        "progress": progress.to_dict(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / TRAIN_STATE_FILENAME
    write_atomically(path, buffer.getvalue())
    return path


def load_train_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / TRAIN_STATE_FILENAME
    if not path.is_file():
        raise ResumeError(
            f"cannot resume {run_dir}: {TRAIN_STATE_FILENAME} is missing "
            "(no epoch completed yet, or the run was not made by imgcls train)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but plain types and tensors
        raise ResumeError(f"cannot resume {run_dir}: {path.name} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("version") != TRAIN_STATE_VERSION:
        raise ResumeError(f"cannot resume {run_dir}: {path.name} has an unknown format version")
    return state
