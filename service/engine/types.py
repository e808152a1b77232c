"""The engine's domain: what a request asks for and what the engine answers, protocol-free.

No HTTP status, no pydantic: the protocols (``imgcls.service.protocols``) map these onto their own
schemas and status codes. Every failure is an ``EngineError`` whose ``reason`` is a stable code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgcls.service.prediction import Prediction

if TYPE_CHECKING:  # numpy only in the workers that decode (the BentoML arbiter imports this module too)
    import numpy as np


class EngineError(Exception):
    """A typed refusal: ``reason`` is a stable code the protocols map onto their status codes."""

    reason = "internal"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class BadParameter(EngineError):
    """A request parameter out of its range (``reason`` names it: bad_top_k, bad_model_name...)."""


class ModelRequired(EngineError):
    """Several models are served and the request named none."""

    reason = "model_required"


class UnknownModel(EngineError):
    """No model (or no such version) of that name is served or in the repository."""

    reason = "unknown_model"


class NotReady(EngineError):
    """The model is still warming up."""

    reason = "not_ready"


class Overloaded(EngineError):
    """The model's inference queue is full."""

    reason = "overloaded"


class LoadRefused(EngineError):
    """A bundle failed verification (or could not be loaded): refused, the old version keeps serving."""

    reason = "load_refused"


@dataclass(frozen=True)
class Upload:
    """One image of a request: its bytes, or why they could not even be extracted."""

    position: int
    filename: str | None
    data: bytes | None
    error: tuple[str, str] | None = None  # (reason, message), e.g. bad_base64


@dataclass(frozen=True)
class ClassifyRequest:
    """What a protocol parsed: the images and the raw parameters (defaulted and checked by the engine)."""

    uploads: tuple[Upload, ...]
    top_k: int | None = None  # None: the server default
    min_score: float | None = None  # None: the card's default
    model: str | None = None  # None: the only model served


@dataclass(frozen=True)
class ImageError:
    reason: str
    message: str


@dataclass(frozen=True)
class Decoded:
    upload: Upload
    pixels: np.ndarray | None
    error: ImageError | None
    decode_s: float


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: name, version (``<folder>@<sha256[:12]>``), architecture, precision, provider."""

    name: str
    version: str
    arch: str
    precision: str
    provider: str


@dataclass(frozen=True)
class ImageOutcome:
    position: int
    filename: str | None
    decode_s: float
    predictions: list[Prediction] | None = None
    abstained: bool | None = None
    error: ImageError | None = None


@dataclass(frozen=True)
class Classification:
    """The answer to a ``ClassifyRequest``: every image's outcome, the parameters used, the timings."""

    model: ModelInfo
    top_k: int
    min_score: float | None
    images: list[ImageOutcome]
    decode_s: float
    queue_s: float
    inference_s: float
    total_s: float

    @property
    def classified(self) -> int:
        return sum(1 for image in self.images if image.error is None)


class AllImagesFailed(EngineError):
    """No image of the request could be classified; ``outcome`` holds each image's error."""

    def __init__(self, message: str, reason: str, outcome: Classification) -> None:
        super().__init__(message, reason)
        self.outcome = outcome
