"""The model card: the one contract between fine-tuning, export and serving (the standard library; its
``preprocess`` section is a ``Preprocess``, which brings NumPy and Pillow once a card is read).

``card.json`` is written by fine-tuning, extended by export and read by everything after. The same
JSON is embedded in each ONNX file's ``metadata_props`` under ``METADATA_KEY``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from imgcls.models.core.atomic import write_atomically

if TYPE_CHECKING:
    from imgcls.models.core.preprocess import Preprocess

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = frozenset({1})
METADATA_KEY = "imgcls.card"
CARD_FILENAME = "card.json"


class CardError(ValueError):
    """A card that is malformed, of an unknown version, or disagrees with what it describes."""


@dataclass(frozen=True)
class ModelCard:
    arch: str
    base_weights: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    train: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    export: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # {temperature, method, fitted_on, images, ece/nll before/after} and/or {min_score}; empty for
    # cards written before calibration existed: temperature 1.0, no abstention.
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.arch:
            raise CardError("card.arch: must be a non-empty string")
        if len(self.class_names) < 2:
            raise CardError(f"card.class_names: need at least 2 classes, got {len(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise CardError("card.class_names: duplicate names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def temperature(self) -> float:
        """Logits are divided by this before the softmax (1.0 when the card has no calibration)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def min_score(self) -> float | None:
        """The default abstention threshold on the top-1 (calibrated) score; None: never abstain."""
        value = self.calibration.get("min_score")
        return None if value is None else float(value)

    def updated(self, **changes: Any) -> "ModelCard":
        """A copy with some fields replaced (mappings are merged one level deep)."""
        merged: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key)
            if isinstance(current, Mapping) and isinstance(value, Mapping):
                merged[key] = {**current, **value}
            else:
                merged[key] = value
        return replace(self, **merged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "arch": self.arch,
            "base_weights": self.base_weights,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "train": dict(self.train),
            "metrics": dict(self.metrics),
            "export": dict(self.export),
            "lineage": dict(self.lineage),
            **({"calibration": dict(self.calibration)} if self.calibration else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelCard":
        if not isinstance(data, Mapping):
            raise CardError("card: expected a JSON object")
        version = data.get("format_version")
        if version not in KNOWN_FORMAT_VERSIONS:
            raise CardError(
                f"card.format_version: {version!r} is not one this imgcls reads "
                f"({sorted(KNOWN_FORMAT_VERSIONS)})"
            )
        _require(data, "arch", str)
        _require(data, "base_weights", str)
        _require(data, "class_names", list)
        if not all(isinstance(name, str) for name in data["class_names"]):
            raise CardError("card.class_names: every entry must be a string")
        _require(data, "preprocess", Mapping)
        try:
            from imgcls.models.core.preprocess import Preprocess

            preprocess = Preprocess.from_dict(data["preprocess"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CardError(f"card.preprocess: {exc}") from exc
        for name in ("train", "metrics", "export", "lineage", "calibration"):
            if name in data:
                _require(data, name, Mapping)
        _check_calibration(data.get("calibration", {}))
        unknown = set(data) - {
            "format_version", "arch", "base_weights", "class_names", "preprocess",
            "train", "metrics", "export", "lineage", "calibration",
        }
        if unknown:
            raise CardError(f"card: unknown field(s) {sorted(unknown)}")
        return cls(
            arch=data["arch"],
            base_weights=data["base_weights"],
            class_names=tuple(data["class_names"]),
            preprocess=preprocess,
            train=dict(data.get("train", {})),
            metrics=dict(data.get("metrics", {})),
            export=dict(data.get("export", {})),
            lineage=dict(data.get("lineage", {})),
            format_version=version,
            calibration=dict(data.get("calibration", {})),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"card: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write ``card.json`` (``path`` may be the file or its directory) atomically."""
        target = Path(path)
        if target.is_dir():
            target = target / CARD_FILENAME
        write_atomically(target, self.to_json().encode("utf-8"))
        return target

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        source = Path(path)
        if source.is_dir():
            source = source / CARD_FILENAME
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CardError(f"card: {source} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise CardError(f"card: {source} is not UTF-8 text") from exc
        try:
            return cls.from_json(text)
        except CardError as exc:
            raise CardError(f"{source}: {exc}") from exc

    def to_metadata_props(self) -> dict[str, str]:
        """Key/value pairs for an ONNX model's ``metadata_props``."""
        return {METADATA_KEY: self.to_json(), "imgcls.format_version": str(self.format_version)}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> "ModelCard":
        """Read the card back from ``metadata_props`` (an ONNX model's or an ORT session's)."""
        if METADATA_KEY not in props:
            raise CardError(f"ONNX metadata has no {METADATA_KEY!r} entry: not an imgcls export")
        return cls.from_json(props[METADATA_KEY])


def _require(data: Mapping[str, Any], name: str, kind: type) -> None:
    if name not in data:
        raise CardError(f"card.{name}: missing")
    if not isinstance(data[name], kind):
        raise CardError(f"card.{name}: expected {kind.__name__}, got {type(data[name]).__name__}")


def _check_calibration(section: Mapping[str, Any]) -> None:
    temperature = section.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.0 < temperature < 1e6:
        raise CardError(f"card.calibration.temperature: expected a positive number, got {temperature!r}")
    min_score = section.get("min_score")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                  or not 0.0 <= min_score <= 1.0):
        raise CardError(f"card.calibration.min_score: expected a number in [0, 1] or null, got {min_score!r}")
