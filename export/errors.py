"""Typed export failures. Each message says what failed and with which figures."""
from __future__ import annotations


class ExportError(RuntimeError):
    """Base class: an export that cannot produce a valid bundle."""


class ConversionError(ExportError):
    """The PyTorch -> ONNX conversion itself failed."""


class GraphContractError(ExportError):
    """The exported graph disagrees with the card (input size, class count, opset, names, dtype)."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree on real images beyond the tolerance."""

    def __init__(self, message: str, figures: dict) -> None:
        super().__init__(message)
        self.figures = figures


class CalibrationError(ExportError):
    """No usable calibration images (e.g. the run's split lists no readable training images)."""


class QuantizationRefused(ExportError):
    """The INT8 model failed the accuracy gate; the fp32 bundle is kept without it."""

    def __init__(self, message: str, figures: dict) -> None:
        super().__init__(message)
        self.figures = figures


class UsageError(ExportError):
    """Bad input the user can fix (an unknown architecture, a missing weights file, unusable --data):
    the CLI exits 2."""
