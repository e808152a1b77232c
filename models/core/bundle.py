"""Checks that a bundle's ONNX file is the one its card describes (no torch, no onnx package).

NumPy and ONNX Runtime are imported where a graph is checked, not with this module: ``imgcls serve``
reads bundle layouts and cards before its server starts, and imports neither.

Every check raises ``BundleError`` with a message naming the file and the disagreement, so a
server refuses to start rather than answer with the wrong labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from imgcls.models.core.verified import cached_sha256
from imgcls.models.core.card import CardError, ModelCard

if TYPE_CHECKING:
    import onnxruntime as ort

PRECISIONS = ("fp32", "int8", "fp16")
DEFAULT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
# Fields of the card that decide what the graph means; the embedded copy must agree on them.
BINDING_FIELDS = ("format_version", "arch", "base_weights", "class_names", "preprocess")


def _ort_load_errors() -> tuple[type[Exception], ...]:
    """What the pinned ONNX Runtime raises for a file it cannot load."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return (ort_state.InvalidProtobuf, ort_state.InvalidGraph, ort_state.Fail, ort_state.NoSuchFile,
            ort_state.NoModel, ort_state.InvalidArgument, ort_state.NotImplemented)


class BundleError(ValueError):
    """A bundle that cannot be served as it is: the message names the file and the problem."""


def training_run_message(path: Path) -> str | None:
    """The message for a training run (or its checkpoint) given where a bundle is expected, else None."""
    path = Path(path)
    if (path / "checkpoint" / "card.json").is_file() or (path / "train_state.pt").is_file():
        run = path
    elif (path / "weights.safetensors").is_file() and not any(path.glob("*.onnx")):
        run = path.parent if (path.parent / "split.json").is_file() else path
    else:
        return None
    return f"{path} is a training run, not a bundle; export it first: imgcls export {run}"


def load_card(bundle_dir: Path) -> ModelCard:
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir}: not a directory")
    hint = training_run_message(bundle_dir)
    if hint:
        raise BundleError(hint)
    try:
        return ModelCard.load(bundle_dir)
    except CardError as exc:
        raise BundleError(f"bundle {bundle_dir}: {exc}") from exc


def model_file(bundle_dir: Path, card: ModelCard, precision: str) -> Path:
    """The ONNX file of ``precision``: as listed in card.export.files, else the default name."""
    if precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    files: Mapping[str, Any] = card.export.get("files", {}) or {}
    listed = [name for name, info in files.items() if isinstance(info, Mapping) and info.get("precision") == precision]
    name = listed[0] if listed else DEFAULT_FILES[precision]
    path = bundle_dir / name
    if not path.is_file():
        have = sorted(p.name for p in bundle_dir.glob("*.onnx"))
        raise BundleError(f"bundle {bundle_dir}: no {precision} model file {name} (ONNX files present: {have})")
    return path


def model_version(bundle_dir: str | Path, digest: str) -> str:
    """``<bundle folder name>@<first 12 hex digits of the ONNX file's sha256>``: what a model is called
    in responses, metrics and score files."""
    return f"{Path(bundle_dir).resolve().name}@{digest[:12]}"


def verify_sha256(card: ModelCard, path: Path) -> str:
    """The file's sha256, refused unless it matches card.lineage["sha256:<file>"]."""
    key = f"sha256:{path.name}"
    expected = card.lineage.get(key)
    if not expected:
        raise BundleError(f"{path.parent / 'card.json'}: lineage has no {key!r}; cannot verify {path.name} (re-export the bundle)")
    actual = cached_sha256(path)
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 {actual[:16]}... does not match card.json lineage {key} {str(expected)[:16]}...; "
            "the ONNX file was replaced or damaged after export"
        )
    return actual


def open_session(path: Path, create) -> tuple[ort.InferenceSession, str]:
    """``create(path)`` -> (session, provider), with ONNX Runtime load errors named."""
    try:
        return create(path)
    except _ort_load_errors() as exc:
        raise BundleError(f"{path}: onnxruntime cannot load it as an ONNX model ({str(exc)[:300]})") from exc


def check_embedded_card(session: ort.InferenceSession, card: ModelCard, path: Path) -> None:
    props = session.get_modelmeta().custom_metadata_map
    try:
        embedded = ModelCard.from_metadata_props(props)
    except CardError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    ours, theirs = card.to_dict(), embedded.to_dict()
    for name in BINDING_FIELDS:
        if ours[name] != theirs[name]:
            raise BundleError(
                f"{path}: the card embedded in the ONNX metadata disagrees with card.json on {name!r} "
                f"(onnx: {_short(theirs[name])}, card.json: {_short(ours[name])}); "
                "the model file does not belong to this card"
            )
    if card.temperature != embedded.temperature:  # it changes every score; min_score may be edited
        raise BundleError(
            f"{path}: card.json's calibration temperature {card.temperature:g} differs from the "
            f"{embedded.temperature:g} embedded in the ONNX metadata; the model file does not belong to this card"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_signature(session: ort.InferenceSession, card: ModelCard, path: Path) -> tuple[str, str]:
    """Input uint8 [N, 3, crop, crop] and output [N, num_classes]; returns (input, output) names."""
    spec = card.export.get("input", {}) or {}
    input_name = spec.get("name", "pixels")
    output_name = (card.export.get("output", {}) or {}).get("name", "logits")
    crop = card.preprocess.crop_size
    for axis in ("height", "width"):
        if axis in spec and int(spec[axis]) != crop:
            raise BundleError(f"card.json: export.input.{axis} {spec[axis]} != preprocess.crop_size {crop}")
    inputs = {i.name: i for i in session.get_inputs()}
    if list(inputs) != [input_name]:
        raise BundleError(f"{path}: expected one input {input_name!r}, graph has {list(inputs)}")
    graph_in = inputs[input_name]
    if graph_in.type != "tensor(uint8)":
        raise BundleError(f"{path}: input {input_name!r} is {graph_in.type}, expected tensor(uint8) pixels")
    shape = graph_in.shape
    expected = [3, crop, crop]
    if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
        raise BundleError(
            f"{path}: input shape {shape} does not match the card's [N, 3, {crop}, {crop}] (preprocess.crop_size)"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    if output_name not in outputs:
        raise BundleError(f"{path}: no output {output_name!r} (graph outputs: {list(outputs)})")
    _check_class_count(session, card, path, input_name, output_name)
    return input_name, output_name


def _check_class_count(session, card: ModelCard, path: Path, input_name: str, output_name: str) -> None:
    declared = session.get_outputs()[[o.name for o in session.get_outputs()].index(output_name)].shape
    if declared and isinstance(declared[-1], int) and declared[-1] != card.num_classes:
        raise BundleError(
            f"{path}: graph outputs {declared[-1]} classes, card.json class_names has {card.num_classes}"
        )
    import numpy as np

    crop = card.preprocess.crop_size
    probe = np.zeros((1, 3, crop, crop), dtype=np.uint8)  # also the warm-up run
    try:
        (logits,) = session.run([output_name], {input_name: probe})
    except Exception as exc:  # noqa: BLE001 - any failure here means the graph cannot serve
        raise BundleError(f"{path}: a probe inference on zeros [1, 3, {crop}, {crop}] failed: {exc}") from exc
    if logits.shape != (1, card.num_classes):
        raise BundleError(
            f"{path}: graph outputs shape {list(logits.shape)} for one image, but card.json class_names "
            f"has {card.num_classes} classes"
        )
