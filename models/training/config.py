"""The frozen training configuration, with sensible defaults per strategy.

``TrainConfig.to_dict()`` is plain JSON: it goes into ``card.train`` and into the resume file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from imgcls.models.core.errors import ConfigError

STRATEGIES = ("head", "finetune", "gradual")
OPTIMIZERS = ("adamw", "sgd")

# Defaults that depend on the strategy: a lone linear head tolerates (and needs) a larger rate
# than a full network; the full network's backbone moves at lr * backbone_lr_mult.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "head": {"lr": 1e-2, "weight_decay": 1e-4, "warmup_epochs": 0.0, "epochs": 15, "patience": 5},
    "finetune": {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0, "epochs": 10, "patience": 4},
    "gradual": {"lr": 3e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "epochs": 12, "patience": 4},
}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    arch: str
    weights: str = "imagenet"
    strategy: str = "head"
    epochs: int = 15
    out: str = "runs/run"
    lr: float = 1e-2
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 0
    threads: int = 0  # torch CPU threads per process (resolved at start; same count -> same numbers)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    class_weights: bool = False
    grad_clip: float = 1.0
    patience: int = 5
    unfreeze_epoch: int = 3
    cached_features: bool = True
    augmented_passes: int = 0
    augment: bool = True
    min_crop_scale: float = 0.08
    hflip: bool = True
    strict: bool = False
    amp: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (0 < self.backbone_lr_mult <= 1, "--backbone-lr-mult must be in (0, 1]"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.workers >= 0, "--workers must be >= 0"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0 (0 disables)"),
            (self.patience >= 0, "--patience must be >= 0 (0 disables early stopping)"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (0 < self.min_crop_scale <= 1, "--min-crop-scale must be in (0, 1]"),
            (self.augmented_passes >= 0, "--augmented-passes must be >= 0"),
            (self.strategy != "gradual" or 0 <= self.unfreeze_epoch < self.epochs,
             "--unfreeze-epoch must be within [0, --epochs) for the gradual strategy"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def uses_feature_cache(self) -> bool:
        return self.strategy == "head" and self.cached_features

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_changes(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


def build_config(options: Mapping[str, Any]) -> TrainConfig:
    """A config from CLI options where ``None`` means "the strategy's default"."""
    strategy = options.get("strategy") or "head"
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    values = {k: v for k, v in options.items() if v is not None}
    for key, default in STRATEGY_DEFAULTS[strategy].items():
        values.setdefault(key, default)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})
