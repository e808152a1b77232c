"""The edge artifact: what ONNX Runtime Mobile runs on Android/iOS/ARM boards.

``edge/model.int8.ort`` (ORT format, converted by ``onnxruntime.tools.convert_onnx_models_to_ort``
from the gated ``model.int8.onnx``), ``edge/model.int8.required_operators.config`` (the operator
list for a reduced ORT build: ``build.sh --minimal_build --include_ops_by_config``) and
``edge/card.json`` (labels + preprocessing) beside them. Graph optimisations are saved at the
portable level (no x86-only NCHWc layout), so the file runs on any CPU; ``arm64`` keeps S8 QDQ
groups fusable for ARM (``session.qdqisint8allowed``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.export.config import INPUT_NAME, OUTPUT_NAME
from imgcls.export.errors import ExportError
from imgcls.models.core.atomic import sha256_file

log = logging.getLogger(__name__)

EDGE_DIR = "edge"
ORT_FILENAME = "model.int8.ort"
OPS_CONFIG_FILENAME = "model.int8.required_operators.config"


@contextlib.contextmanager
def _quiet(prefix: str):
    """``prefix`` and its child loggers at WARNING (ORT's tools set e.g. ``ort_format_model.utils``
    to DEBUG themselves, so quieting the parent alone lets their INFO lines through)."""
    import onnxruntime.tools.ort_format_model.utils  # noqa: F401  (creates its logger at import)

    names = [prefix] + [n for n in logging.root.manager.loggerDict if n.startswith(prefix + ".")]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def convert_to_ort(int8_path: Path, out_dir: Path, target: str) -> tuple[Path, Path]:
    """Write ``out_dir/model.int8.ort`` and its required-operators config; returns both paths."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgcls-ort-") as scratch:
        source = Path(scratch) / int8_path.name
        shutil.copyfile(int8_path, source)  # the converter writes beside its input when asked for a directory
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), _quiet("ort_format_model"):  # it prints its progress
                convert_onnx_models_to_ort(source, output_dir=Path(scratch) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform="arm" if target == "arm64" else None)
        except Exception as exc:  # the converter raises whatever ORT raises
            raise ExportError(f"ORT format conversion failed: {type(exc).__name__}: {exc}") from exc
        log.debug("convert_onnx_models_to_ort: %s", chatter.getvalue())
        produced = Path(scratch) / "out"
        ort_file = out_dir / ORT_FILENAME
        config = out_dir / OPS_CONFIG_FILENAME
        shutil.move(str(produced / ORT_FILENAME), ort_file)
        shutil.move(str(next(produced.glob("*.config"))), config)
    return ort_file, config


def ort_parity(int8_path: Path, ort_path: Path, pixels: np.ndarray) -> dict[str, Any]:
    """The ``.ort`` file vs the INT8 ONNX file on the same images (both loaded by onnxruntime)."""
    from imgcls.export.validate import run_batches, session

    onnx_logits = run_batches(session(int8_path), pixels, 8)
    ort_logits = run_batches(session(ort_path), pixels, 8)
    agreement = float(np.mean(onnx_logits.argmax(1) == ort_logits.argmax(1)))
    return {"images": int(len(pixels)), "top1_agreement": agreement,
            "max_abs_logit_diff": float(np.abs(onnx_logits - ort_logits).max())}


def add_edge(staging: Path, target: str, pixels: np.ndarray) -> dict[str, Any]:
    """Convert the bundle's gated INT8 file; the card section describing ``edge/``."""
    int8_path = staging / "model.int8.onnx"
    ort_file, config = convert_to_ort(int8_path, staging / EDGE_DIR, target)
    parity = ort_parity(int8_path, ort_file, pixels)
    if parity["top1_agreement"] < 1.0:
        raise ExportError(f"{ort_file.name} disagrees with model.int8.onnx on {parity['images']} images: "
                          f"top-1 agreement {100 * parity['top1_agreement']:.1f}%")
    operators = [line for line in config.read_text().splitlines() if line and not line.startswith("#")]
    log.info("edge: %s (%d bytes), %d operator lines", ort_file.name, ort_file.stat().st_size, len(operators))
    return {"dir": EDGE_DIR, "ort": f"{EDGE_DIR}/{ORT_FILENAME}", "operators_config": f"{EDGE_DIR}/{OPS_CONFIG_FILENAME}",
            "ort_bytes": ort_file.stat().st_size, "sha256": sha256_file(ort_file), "target": target,
            "parity_vs_int8_onnx": parity, "input": INPUT_NAME, "output": OUTPUT_NAME,
            "optimization": "ORT format, Fixed style, portable (no NCHWc)"}
