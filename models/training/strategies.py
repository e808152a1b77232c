"""Which parts of the network train: ``head``, ``finetune`` or ``gradual`` (head first, then all).

A frozen part is frozen completely: ``requires_grad=False`` for its parameters *and* ``eval()``
for its modules (BatchNorm running statistics, dropout), reapplied after every ``model.train()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from imgcls.models.zoo.registry import head_parameter_names


def is_head_name(name: str, heads: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in heads)


def split_parameters(model: nn.Module, arch: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters), each in ``named_parameters`` order."""
    heads = head_parameter_names(arch)
    backbone, head = [], []
    for name, parameter in model.named_parameters():
        (head if is_head_name(name, heads) else backbone).append(parameter)
    return backbone, head


def backbone_trainable(strategy: str, epoch: int, unfreeze_epoch: int) -> bool:
    """Whether the backbone trains during ``epoch`` (0-based)."""
    if strategy == "head":
        return False
    if strategy == "gradual":
        return epoch >= unfreeze_epoch
    return True


@dataclass
class Freezer:
    """Applies a strategy's freezing to one model, epoch by epoch."""

    model: nn.Module
    arch: str
    backbone_frozen: bool = True

    def set_backbone_frozen(self, frozen: bool) -> None:
        self.backbone_frozen = frozen
        backbone, _ = split_parameters(self.model, self.arch)
        for parameter in backbone:
            parameter.requires_grad_(not frozen)

    def train_mode(self) -> None:
        """``model.train()``, then every frozen module back to ``eval()``."""
        self.model.train()
        if not self.backbone_frozen:
            return
        heads = head_parameter_names(self.arch)
        for name, module in self.model.named_modules():
            if name and not is_head_name(name, heads) and not _contains_head(name, heads):
                module.eval()


def _contains_head(name: str, heads: tuple[str, ...]) -> bool:
    """True for ancestors of a head (e.g. ``classifier`` of ``classifier.1``): they stay in train
    mode so ``Inception3.training`` still yields aux logits; their own frozen children go to eval."""
    return any(prefix.startswith(name + ".") for prefix in heads)
