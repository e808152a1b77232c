"""Export: checkpoint -> validated ONNX bundle (``export_bundle``), optionally with INT8."""
from imgcls.export.config import ExportConfig
from imgcls.export.errors import (
    CalibrationError, ConversionError, ExportError, GraphContractError, ParityError, QuantizationRefused,
)


def export_bundle(run_dir, out_dir, config: ExportConfig = ExportConfig()):
    """See ``imgcls.export.bundle.export_bundle`` (imported lazily: it pulls in torch)."""
    from imgcls.export.bundle import export_bundle as _export_bundle

    return _export_bundle(run_dir, out_dir, config)


__all__ = [
    "ExportConfig", "export_bundle", "ExportError", "ConversionError", "GraphContractError",
    "ParityError", "CalibrationError", "QuantizationRefused",
]
