"""Backbone features computed once, for training a head on a frozen backbone.

The feature extractor is the model with each classifier head replaced by ``nn.Identity``, in
``eval()`` mode: exactly what the head sees in the full model at evaluation time, for every zoo
architecture (torchvision's and timm's; inception_v3 in eval mode returns main logits only, so its
auxiliary head is not trained by the cached path and is unused at inference).

Features are kept on disk in pieces, so that caching interrupted at any point resumes where it
stopped (``imgcls train --resume``) instead of starting over. ``runs/<run>/feature_cache/`` holds
one safetensors file per piece of ``PIECE_BATCHES`` batches, named
``<part>-<key>-<start>-<stop>.safetensors``: the features of images ``start..stop-1`` of a part
(``train``, ``pass<k>`` for augmented passes, ``val``). Each piece is written atomically as soon as
it is computed, so a piece on disk is always complete. ``key`` hashes everything the features
depend on (the backbone's weights, the preprocessing, the split listing, the part's augmentation,
the engine that computes them: ONNX Runtime on the exported backbone,
``imgcls.models.training.ort_features``, or PyTorch eager), so a piece computed under other
settings is never reused. Pieces are whole batches in the loader order of an uninterrupted run, so
reused and recomputed features are the same numbers. ``stats.json`` says how the last caching ran. In DDP,
rank r computes (and writes) pieces r, r + N, ...
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from imgcls.models.core.atomic import write_atomically
from imgcls.models.training.loop import to_device
from imgcls.models.zoo.registry import get_submodule_parent, head_parameter_names

log = logging.getLogger(__name__)

CACHE_DIRNAME = "feature_cache"
STATS_FILENAME = "stats.json"
PIECE_BATCHES = 4
_PIECE = re.compile(r"^(?P<part>[a-z0-9]+)-(?P<key>[0-9a-f]{16})-(?P<start>\d+)-(?P<stop>\d+)\.safetensors$")


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


def state_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A short hash of plain-JSON ``parts``: what a part's features depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def piece_ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


@dataclass(frozen=True)
class FeatureStore:
    directory: Path

    def path(self, part: str, key: str, start: int, stop: int) -> Path:
        return self.directory / f"{part}-{key}-{start:07d}-{stop:07d}.safetensors"

    def load(self, part: str, key: str, start: int, stop: int) -> torch.Tensor | None:
        """The piece's features, or None when it is absent or unreadable (then it is recomputed)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(part, key, start, stop)
        if not path.is_file():
            return None
        try:
            rows = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            log.warning("feature cache: ignoring unreadable %s (%s)", path.name, exc)
            return None
        return rows if rows.shape[0] == stop - start else None

    def save(self, part: str, key: str, start: int, stop: int, rows: torch.Tensor) -> None:
        from safetensors.torch import save

        write_atomically(self.path(part, key, start, stop), save({"features": rows.contiguous()}))

    def write_stats(self, stats: dict[str, Any]) -> None:
        """``stats.json``: how the last caching ran (engine, threads, images computed and reused, seconds)."""
        write_atomically(self.directory / STATS_FILENAME, json.dumps(stats, indent=2).encode())

    def forget_other_keys(self, keys: Iterable[str]) -> int:
        """Delete pieces (and only pieces) computed under other settings; returns how many."""
        keep, removed = set(keys), 0
        for path in self.directory.glob("*.safetensors") if self.directory.is_dir() else ():
            match = _PIECE.match(path.name)
            if match and match["key"] not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


@torch.no_grad()
def features_in_pieces(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    store: FeatureStore,
    part: str,
    key: str,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[Iterable, int], Iterable] = lambda loader, total: loader,
    batches: Callable[[Dataset, int], Iterable[tuple[torch.Tensor, Any]]] | None = None,
) -> tuple[torch.Tensor, list[int], int]:
    """(features of this rank's pieces, their dataset indices, images reused from disk).

    Pieces already on disk are read; the rest are computed in one pass and each is written as soon
    as its last batch is done. ``batches(subset, batch_size)``, when given, yields the ``(inputs,
    labels)`` batches that go to ``extractor`` as they are (``OrtBackbone.batches``: decoded in
    threads, as the Predictor does); otherwise a ``DataLoader`` with ``workers`` processes feeds
    ``extractor`` on ``device``."""
    mine = piece_ranges(len(dataset), batch_size * PIECE_BATCHES)[rank::world_size]
    pieces: list[torch.Tensor | None] = [store.load(part, key, a, b) for a, b in mine]
    missing = [i for i, rows in enumerate(pieces) if rows is None]
    reused = sum(b - a for (a, b), rows in zip(mine, pieces) if rows is not None)
    indices = [i for n in missing for i in range(*mine[n])]
    if indices:
        subset = Subset(dataset, indices)
        if batches is None:
            loader: Iterable = ((to_device(images, device), labels) for images, labels in
                                DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers))
        else:
            loader = batches(subset, batch_size)
        pending, waiting = list(missing), []
        for images, _ in progress(loader, len(indices)):
            waiting.append(torch.flatten(extractor(images), 1).float().cpu())
            buffered = torch.cat(waiting)
            waiting = [buffered]
            while pending and buffered.shape[0] >= mine[pending[0]][1] - mine[pending[0]][0]:
                n = pending.pop(0)
                start, stop = mine[n]
                pieces[n], buffered = buffered[: stop - start].clone(), buffered[stop - start:]
                store.save(part, key, start, stop, pieces[n])
                waiting = [buffered]
    local_indices = [i for a, b in mine for i in range(a, b)]
    rows = torch.cat([p for p in pieces if p is not None]) if local_indices else torch.empty(0)
    return rows, local_indices, reused
