"""Checkpoints on disk: ``weights.safetensors`` + ``card.json`` in one directory, written atomically.

Loading builds the architecture named by the card with a head of ``len(class_names)`` and loads
the weights strictly: a card that disagrees with the weights is refused with a message naming
the mismatch.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imgcls.models.core.atomic import sha256_file, staged_directory
from imgcls.models.core.card import CardError, ModelCard
from imgcls.models.zoo.registry import UnknownArchError, build, entry_for

WEIGHTS_FILENAME = "weights.safetensors"
CHECKPOINT_DIRNAME = "checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or whose card disagrees with its weights."""


def checkpoint_dir(path: str | Path) -> Path:
    """Accept a run directory (``runs/x``) or the checkpoint directory itself."""
    path = Path(path)
    if (path / CHECKPOINT_DIRNAME / WEIGHTS_FILENAME).exists() or (path / CHECKPOINT_DIRNAME).is_dir():
        return path / CHECKPOINT_DIRNAME
    return path


def save_checkpoint(directory: str | Path, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write weights and card into ``directory`` (replaced whole, never half-written)."""
    from safetensors.torch import save_file

    state = {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in model.state_dict().items()}
    with staged_directory(directory) as staging:
        weights_path = staging / WEIGHTS_FILENAME
        save_file(state, str(weights_path), metadata={"arch": card.arch})
        card = card.updated(lineage={"weights_sha256": sha256_file(weights_path)})
        card.save(staging)
    return card


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, ModelCard]:
    """Model (eval mode, on CPU) and card from a checkpoint or run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = checkpoint_dir(directory)
    weights_path = directory / WEIGHTS_FILENAME
    try:
        card = ModelCard.load(directory)
    except CardError as exc:
        raise CheckpointError(f"checkpoint {directory}: {exc}") from exc
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {WEIGHTS_FILENAME} is missing")
    expected_hash = card.lineage.get("weights_sha256")
    if expected_hash and sha256_file(weights_path) != expected_hash:
        raise CheckpointError(
            f"checkpoint {directory}: {WEIGHTS_FILENAME} does not match the sha256 recorded in card.json "
            "(the weights were replaced or corrupted)"
        )
    try:
        entry_for(card.arch)
    except UnknownArchError as exc:
        raise CheckpointError(f"checkpoint {directory}: card.arch: {exc}") from exc
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: unreadable weights ({exc})") from exc
    model = build(card.arch, card.num_classes)
    _check_fits(model, state, card, directory)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, card


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], card: ModelCard, directory: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory}: weights do not fit card.arch={card.arch!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            hint = ""
            head = entry_for(card.arch).head
            if key.startswith(head + "."):
                hint = (
                    f": the head has {tensor.shape[0]} outputs but card.class_names lists "
                    f"{card.num_classes} classes"
                )
            raise CheckpointError(
                f"checkpoint {directory}: {key} has shape {tuple(tensor.shape)}, "
                f"card.arch={card.arch!r} expects {tuple(own[key].shape)}{hint}"
            )
