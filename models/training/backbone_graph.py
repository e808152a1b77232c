"""The backbone graph ``imgcls train --strategy head`` converted, kept for ``imgcls export`` to reuse.

Feature caching converts the frozen backbone (``onnx_graph.pixels_graph``: uint8 pixels in,
features out) to run it with ONNX Runtime. That graph is written to
``runs/<run>/feature_cache/backbone.onnx`` (atomically), with what identifies it in its own
``metadata_props`` (``IDENTITY_KEY``: the sha256 of the backbone's state dict, BatchNorm buffers
included, the architecture, preprocessing, opset, exporter, torch version and input/output names).
``imgcls export`` builds ``model.onnx`` from it plus the classifier when the checkpoint's backbone
and the asked conversion give the same identity (``imgcls.export.splice``), instead of converting
the whole model again. The file is read with ``onnx`` only, and anything that does not match is
ignored (the export then converts in full).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx
import torch

from imgcls.models.core.atomic import write_atomically
from imgcls.models.core.preprocess import Preprocess

log = logging.getLogger(__name__)

FILENAME = "backbone.onnx"
IDENTITY_KEY = "imgcls.backbone_graph"
FORMAT = 1


def identity(backbone_sha256: str, arch: str, preprocess: Preprocess, *, opset: int, exporter: str,
             names: tuple[str, str]) -> dict[str, Any]:
    """What a converted backbone graph depends on (plain JSON)."""
    return {"format": FORMAT, "arch": arch, "backbone_sha256": backbone_sha256,
            "preprocess": preprocess.to_dict(), "opset": opset, "exporter": exporter, "torch": torch.__version__,
            "input": names[0], "output": names[1]}


def save(path: Path, proto: onnx.ModelProto, ident: dict[str, Any]) -> None:
    """Write ``proto`` with ``ident`` in its metadata to ``path`` (temporary file + rename)."""
    onnx.helper.set_model_props(proto, {IDENTITY_KEY: json.dumps(ident, sort_keys=True)})
    try:
        write_atomically(path, proto.SerializeToString())
    except OSError as exc:  # the run goes on; the export will convert in full
        log.warning("could not keep the backbone graph in %s (%s)", path, exc)


def load(path: Path, expected: dict[str, Any]) -> tuple[onnx.ModelProto | None, str]:
    """(the saved graph, "") when ``path`` holds one whose identity is ``expected``, else (None, why not)."""
    if not path.is_file():
        return None, f"no {path.name} in {path.parent}"
    try:
        proto = onnx.load_model_from_string(path.read_bytes())
        props = {p.key: p.value for p in proto.metadata_props}
        recorded = json.loads(props[IDENTITY_KEY])
    except KeyError:
        return None, f"{path.name} carries no identity"
    except Exception as exc:  # protobuf's DecodeError, OSError, JSON errors: an unreadable file is not reused
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(recorded, dict):
        return None, f"{path.name} carries no identity"
    expected = json.loads(json.dumps(expected))  # tuples as lists, as recorded
    differing = sorted(key for key in expected.keys() | recorded.keys() if recorded.get(key) != expected.get(key))
    if differing:
        return None, f"{path.name} was converted from another backbone or setting ({', '.join(differing)} differ)"
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if inputs != [expected["input"]] or [o.name for o in graph.output] != [expected["output"]]:
        return None, f"{path.name}: graph inputs/outputs {inputs} -> {[o.name for o in graph.output]} are not the recorded ones"
    return proto, ""
