"""Backbone features computed once, for training a head on a frozen backbone.

The feature extractor is the model with each classifier head replaced by ``nn.Identity``, in
``eval()`` mode: exactly what the head sees in the full model at evaluation time, for every zoo
architecture (torchvision's and timm's; inception_v3 in eval mode returns main logits only, so its
auxiliary head is not trained by the cached path and is unused at inference).
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from imgcls.models.training.loop import to_device
from imgcls.models.zoo.registry import get_submodule_parent, head_parameter_names

log = logging.getLogger(__name__)


def main_head(model: nn.Module, arch: str) -> nn.Module:
    """The classifier head module (shared with ``model``: training it trains the model)."""
    return model.get_submodule(head_parameter_names(arch)[0])


def feature_extractor(model: nn.Module, arch: str) -> nn.Module:
    """A copy of ``model`` without its head(s), in eval mode, with no gradients."""
    extractor = copy.deepcopy(model)
    for dotted in head_parameter_names(arch):
        parent, leaf = get_submodule_parent(extractor, dotted)
        setattr(parent, leaf, nn.Identity())
    extractor.eval()
    for parameter in extractor.parameters():
        parameter.requires_grad_(False)
    return extractor


@torch.no_grad()
def compute_features(
    extractor: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    indices: list[int] | None = None,
    progress: Callable[[DataLoader], object] = lambda loader: loader,
) -> torch.Tensor:
    """Features (float32, on CPU) of ``dataset`` (or of ``indices`` of it), in order."""
    source = dataset if indices is None else Subset(dataset, indices)
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=workers)
    chunks = []
    for images, _ in progress(loader):  # type: ignore[attr-defined]
        output = extractor(to_device(images, device))
        chunks.append(torch.flatten(output, 1).float().cpu())
    if not chunks:
        return torch.empty(0)
    return torch.cat(chunks)


def gather_rows(local: torch.Tensor, indices: list[int], total: int, world_size: int) -> torch.Tensor:
    """Reassemble rows computed by each rank (rank r holds ``indices`` r::world) into one tensor."""
    if world_size == 1:
        return local
    import torch.distributed as dist

    parts: list[tuple[list[int], torch.Tensor] | None] = [None] * world_size
    dist.all_gather_object(parts, (indices, local))
    width = next(t.shape[1] for _, t in parts if t.numel())  # type: ignore[misc]
    result = torch.empty(total, width)
    for part_indices, rows in parts:  # type: ignore[misc]
        if part_indices:
            result[torch.tensor(part_indices)] = rows
    return result

