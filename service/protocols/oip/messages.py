"""The Open Inference Protocol (KServe v2) REST messages: the types and the infer request parser.

Pure protocol, no I/O: ``parse_infer(body, header_length, model)`` turns the body of
``POST /v2/models/{name}/infer`` into an ``InferRequest`` (or raises ``OIPError`` with the 4xx
status and message the spec's ``{"error": "..."}`` body carries); ``imgcls.service.protocols.oip.response``
builds the answer. Supported:

- inputs (exactly one per request): ``image`` BYTES ``[N]``, each element one encoded image file
  (JSON: a base64 string; binary: the raw file), or ``pixels`` UINT8 ``[N, 3, S, S]`` already
  resized (and cropped, or not) by the client, unnormalised (JSON: nested or flat integers; binary:
  raw bytes); FP32 pixels in 0..255 are taken too (rounded). The graph normalises inside;
- a model's views (``ModelSpec.view``): the model itself declares both inputs, its view ``image``
  only ``image`` and its view ``pixels`` only ``pixels`` (clients that expect one input);
- output ``probabilities`` FP32 ``[N, C]``, or with ``"classification": k`` BYTES ``[N, k]``
  holding ``"score:index:label"`` strings, best first;
- the binary tensor data extension: a JSON header of ``Inference-Header-Content-Length`` bytes
  followed by the binary inputs (``binary_data_size``) in input order; binary outputs when an
  output asks ``"binary_data": true`` or the request ``"binary_data_output": true``. BYTES
  elements in binary form are a 4-byte little-endian length followed by the bytes;
- gzip or deflate request bodies (``Content-Encoding``), inflated within the body limit.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgcls.service.protocols.encoding import decode_base64

if TYPE_CHECKING:  # NumPy loads where arrays are made: BentoML's arbiter imports this module without it
    import numpy as np

IMAGE, PIXELS, PROBABILITIES = "image", "pixels", "probabilities"
VIEWS = {"": (IMAGE, PIXELS), IMAGE: (IMAGE,), PIXELS: (PIXELS,)}  # view -> the inputs it declares and takes
PIXEL_DATATYPES = ("UINT8", "FP32")  # declared: UINT8; FP32 values 0..255 are rounded
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "model_configuration")
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "onnxruntime_onnx"
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class OIPError(Exception):
    """A request the protocol refuses: ``status`` (4xx) and the message of ``{"error": message}``."""

    def __init__(self, status: int, message: str, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # a bounded code for metrics labels


@dataclass(frozen=True)
class ModelSpec:
    """What the protocol needs to know about the served model."""

    name: str
    version: str
    crop_size: int
    class_names: tuple[str, ...]
    max_images: int
    view: str = ""  # "": the model (both inputs); "image" or "pixels": the view declaring that input only

    def input_shapes(self) -> dict[str, tuple[str, list[int]]]:
        """The declared inputs: name -> (datatype, shape); -1 marks the batch dimension."""
        size = self.crop_size
        shapes = {IMAGE: ("BYTES", [-1]), PIXELS: ("UINT8", [-1, 3, size, size])}
        return {name: shapes[name] for name in VIEWS[self.view]}

    def metadata(self) -> dict[str, Any]:
        """The model metadata response (``GET /v2/models/{name}``)."""
        return {
            "name": self.name, "versions": [self.version], "platform": PLATFORM,
            "inputs": [{"name": name, "datatype": datatype, "shape": shape}
                       for name, (datatype, shape) in self.input_shapes().items()],
            "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(self.class_names)]}],
        }


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # 0: the probabilities themselves; k: the top-k as "score:index:label"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: tuple[bytes, ...] | None  # input "image": encoded files
    pixels: np.ndarray | None  # input "pixels": uint8 [N, 3, S, S]
    outputs: tuple[RequestedOutput, ...]

    @property
    def count(self) -> int:
        return len(self.images) if self.images is not None else len(self.pixels)  # type: ignore[arg-type]


def bad(message: str, reason: str = "bad_request") -> OIPError:
    return OIPError(400, message, reason)


# ---------------------------------------------------------------- request
def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body of a ``Content-Encoding: gzip | deflate`` request (tritonclient's request compression),
    inflated to at most ``limit`` bytes: a compression bomb is refused (413) without inflating it whole."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise bad(f"Content-Encoding {encoding[:20]!r} is not supported (gzip, deflate or none)", "bad_encoding")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad(f"the {encoding} body cannot be inflated ({exc})", "bad_encoding") from None
    if len(inflated) > limit:
        raise OIPError(413, f"the inflated body exceeds the limit of {limit} bytes", "body_too_large")
    if not inflater.eof:
        raise bad(f"the {encoding} body is truncated", "bad_encoding")
    return inflated


def json_length(body_length: int, header_length: str | None) -> int:
    """Bytes of the JSON header: ``header_length`` (the binary tensor extension), else the whole body."""
    if header_length is None:
        return body_length
    if not header_length.strip().isdigit() or int(header_length) > body_length:
        raise bad(f"{HEADER_LENGTH} {header_length[:20]!r} must be an integer between 0 and the body length "
                  f"({body_length})", "bad_header_length")
    return int(header_length)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header (a dict) and the binary section after it."""
    size = json_length(len(body), header_length)
    header, binary = body[:size], body[size:]
    try:
        document = json.loads(header or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the request header is not valid JSON ({exc})", "bad_json") from None
    except RecursionError:
        raise bad("the request header nests JSON too deeply", "bad_json") from None
    if not isinstance(document, dict):
        raise bad('the request must be a JSON object {"inputs": [...]}', "bad_json")
    return document, binary


def parse_infer(body: bytes, header_length: str | None, model: ModelSpec) -> InferRequest:
    return parse_document(*split_body(body, header_length), model)


def parse_document(document: dict[str, Any], binary: bytes, model: ModelSpec) -> InferRequest:
    """An infer request from its JSON document and the binary section after it (REST and gRPC alike)."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad('"id" must be a string', "bad_json")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f'"inputs" must hold exactly one tensor: {_declared(model)}', "bad_input")
    tensor = inputs[0]
    name, shape, data = _tensor_header(tensor, model)
    raw = _binary_part(tensor, binary)
    if raw is None and data is None:
        raise bad(f'input {name!r} has neither "data" nor a "binary_data_size" parameter', "bad_input")
    if raw is not None and data is not None:
        raise bad(f'input {name!r} has both "data" and binary data', "bad_input")
    if name == IMAGE:
        images = _binary_bytes(raw, shape[0]) if raw is not None else _json_bytes(data, shape[0])
        pixels = None
    else:
        datatype = tensor["datatype"]
        images = None
        pixels = _binary_pixels(raw, shape, datatype) if raw is not None else _json_pixels(data, shape, datatype)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad('"parameters" must be an object', "bad_json")
    default_binary = _flag(parameters, "binary_data_output")
    outputs = _requested_outputs(document.get("outputs"), default_binary)
    return InferRequest(request_id, images, pixels, outputs)


def _tensor_header(tensor: dict[str, Any], model: ModelSpec) -> tuple[str, list[int], Any]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    expected = {IMAGE: ("BYTES",), PIXELS: PIXEL_DATATYPES}
    if name not in VIEWS[model.view]:
        raise bad(f"unknown input {str(name)[:40]!r}: {model.name!r} takes {_declared(model)}", "bad_input")
    if datatype not in expected[name]:
        raise bad(f"input {name!r} must have datatype {' or '.join(expected[name])}, got {str(datatype)[:20]!r}",
                  "bad_datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"input {name!r}: shape must be a list of non-negative integers", "bad_shape")
    size = model.crop_size
    if name == IMAGE and len(shape) != 1:
        raise bad(f"input {IMAGE!r} must have shape [N] (one encoded file per element), got {shape}", "bad_shape")
    if name == PIXELS and (len(shape) != 4 or shape[1:] != [3, size, size]):
        raise bad(f"input {PIXELS!r} must have shape [N, 3, {size}, {size}] (resized and cropped per the card), "
                  f"got {shape}", "bad_shape")
    if shape[0] == 0:
        raise bad(f"input {name!r} holds no images (shape {shape})", "no_images")
    if shape[0] > model.max_images:
        raise OIPError(413, f"{shape[0]} images exceeds the limit of {model.max_images} per request", "too_many_images")
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad(f"input {name!r}: parameters must be an object", "bad_json")
    if any(key in parameters for key in UNSUPPORTED_PARAMETERS):
        raise bad("the shared-memory extension is not supported: send the data in the request", "bad_input")
    return name, shape, tensor.get("data")


def _binary_part(tensor: dict[str, Any], binary: bytes) -> bytes | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise bad(f"{len(binary)} bytes of binary data follow the header but no input declares "
                      "binary_data_size", "bad_binary")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size != len(binary):
        raise bad(f"binary_data_size {str(size)[:20]} does not match the {len(binary)} bytes after the header",
                  "bad_binary")
    return binary


def _binary_bytes(raw: bytes, count: int) -> tuple[bytes, ...]:
    """BYTES elements in binary form: 4-byte little-endian length + bytes, ``count`` of them, nothing more."""
    items, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise bad(f"binary BYTES data ends before element {index} of {count}", "bad_binary")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise bad(f"binary BYTES element {index} claims {length} bytes, only {len(raw) - offset - 4} remain",
                      "bad_binary")
        items.append(raw[offset + 4: offset + 4 + length])
        offset += 4 + length
    if offset != len(raw):
        raise bad(f"{len(raw) - offset} bytes of binary data follow the {count} declared elements", "bad_binary")
    return tuple(items)


def _json_bytes(data: Any, count: int) -> tuple[bytes, ...]:
    flat = data[0] if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list) else data
    if not isinstance(flat, list) or len(flat) != count:
        raise bad(f'input {IMAGE!r}: "data" must be a list of {count} base64 strings (the shape says {count})',
                  "bad_shape")
    images = []
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise bad(f"image[{index}]: bad_base64: expected a base64 string of the image file", "bad_base64")
        try:
            images.append(decode_base64(item))
        except ValueError as exc:
            raise bad(f"image[{index}]: bad_base64: {exc}", "bad_base64") from None
    return tuple(images)


def _declared(model: ModelSpec) -> str:
    return " or ".join(f"{name!r} ({datatype} {shape})" for name, (datatype, shape) in model.input_shapes().items())


def _binary_pixels(raw: bytes, shape: list[int], datatype: str = "UINT8") -> np.ndarray:
    import numpy as np

    dtype = np.dtype("<f4") if datatype == "FP32" else np.dtype(np.uint8)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise bad(f"input {PIXELS!r}: {len(raw)} bytes of binary data, the shape {shape} of {datatype} needs "
                  f"{math.prod(shape) * dtype.itemsize}", "bad_shape")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return _float_pixels(array) if datatype == "FP32" else array


def _float_pixels(array: np.ndarray) -> np.ndarray:
    """FP32 pixels (0..255, unnormalised) as the graph's uint8 input, rounded; anything else refused."""
    import numpy as np

    if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 255):
        raise bad(f"input {PIXELS!r}: FP32 values must be within 0..255 (unnormalised pixels)", "bad_data")
    return np.rint(array).astype(np.uint8)


def _json_pixels(data: Any, shape: list[int], datatype: str = "UINT8") -> np.ndarray:
    import numpy as np

    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise bad(f'input {PIXELS!r}: "data" must be a (nested) list of numbers 0..255', "bad_data") from None
    kinds = "iuf" if datatype == "FP32" else "iu"
    if array.dtype.kind not in kinds:
        raise bad(f'input {PIXELS!r}: "data" must hold {"numbers" if datatype == "FP32" else "integers"} 0..255 only',
                  "bad_data")
    if array.size != math.prod(shape):
        raise bad(f"input {PIXELS!r}: {array.size} values, the shape {shape} needs {math.prod(shape)}", "bad_shape")
    if datatype == "FP32":
        return _float_pixels(array.reshape(shape).astype(np.float32))
    if array.size and (array.min() < 0 or array.max() > 255):
        raise bad(f"input {PIXELS!r}: values must be within 0..255 (UINT8)", "bad_data")
    return array.reshape(shape).astype(np.uint8)


def _flag(parameters: dict[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise bad(f"parameter {key!r} must be true or false", "bad_json")
    return value


def _requested_outputs(outputs: Any, default_binary: bool) -> tuple[RequestedOutput, ...]:
    if outputs is None:
        return (RequestedOutput(PROBABILITIES, default_binary, 0),)
    if not isinstance(outputs, list) or not outputs:
        raise bad('"outputs" must be a non-empty list of {"name": ...} objects', "bad_output")
    requested = []
    for item in outputs:
        if not isinstance(item, dict) or item.get("name") != PROBABILITIES:
            shown = item.get("name") if isinstance(item, dict) else item
            raise bad(f"unknown output {str(shown)[:40]!r}: this model outputs {PROBABILITIES!r}", "bad_output")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise bad("output parameters must be an object", "bad_output")
        if any(key in parameters for key in UNSUPPORTED_PARAMETERS):
            raise bad("the shared-memory extension is not supported: outputs come back in the response", "bad_output")
        k = parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise bad(f"classification must be a positive integer, got {str(k)[:20]!r}", "bad_output")
        binary = _flag(parameters, "binary_data") if "binary_data" in parameters else default_binary
        requested.append(RequestedOutput(PROBABILITIES, binary, k))
    return tuple(requested)
