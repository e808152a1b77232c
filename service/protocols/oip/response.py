"""The Open Inference Protocol (KServe v2) infer response: JSON, or a JSON header + binary outputs.

``encode_infer(request, model, probabilities)`` answers an ``imgcls.service.protocols.oip.messages.InferRequest``:
each requested output as FP32 ``[N, C]`` probabilities or, with the classification extension,
BYTES ``[N, k]`` ``"score:index:label"`` strings (best first, scores as Triton prints them: 6
decimals), as JSON ``data`` or binary (``binary_data_size``; BYTES elements length-prefixed).
"""
from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from imgcls.service.protocols.oip.messages import HEADER_LENGTH, InferRequest, ModelSpec, RequestedOutput
from imgcls.service.prediction import top_k_indices

if TYPE_CHECKING:  # NumPy loads where arrays are made: BentoML's arbiter imports this module without it
    import numpy as np


def classification_strings(probabilities: np.ndarray, k: int, class_names: tuple[str, ...]) -> list[list[str]]:
    """Per row the top ``k`` (clamped to the class count) as ``"score:index:label"``, best first."""
    return [[f"{row[i]:f}:{int(i)}:{class_names[int(i)]}" for i in top_k_indices(row, k)] for row in probabilities]


def serialize_bytes(items: list[str]) -> bytes:
    encoded = [item.encode("utf-8") for item in items]
    return b"".join(struct.pack("<I", len(item)) + item for item in encoded)


def encode_output(request: RequestedOutput, probabilities: np.ndarray,
            class_names: tuple[str, ...]) -> tuple[dict[str, Any], bytes | None]:
    if request.classification:
        rows = classification_strings(probabilities, request.classification, class_names)
        flat = [item for row in rows for item in row]
        tensor = {"name": request.name, "datatype": "BYTES", "shape": [len(rows), len(rows[0]) if rows else 0]}
        raw = serialize_bytes(flat) if request.binary else None
        data: list[Any] = flat
    else:
        import numpy as np

        values = np.ascontiguousarray(probabilities, dtype="<f4")
        tensor = {"name": request.name, "datatype": "FP32", "shape": list(values.shape)}
        raw = values.tobytes() if request.binary else None
        data = values.ravel().tolist() if raw is None else []
    if raw is None:
        tensor["data"] = data
    else:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    return tensor, raw


def encode_infer(request: InferRequest, model: ModelSpec, probabilities: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON only, or a JSON header followed by the binary outputs."""
    outputs, chunks = [], []
    for requested in request.outputs:
        tensor, raw = encode_output(requested, probabilities, model.class_names)
        outputs.append(tensor)
        if raw is not None:
            chunks.append(raw)
    document: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def error_document(message: str) -> dict[str, str]:
    return {"error": message}
