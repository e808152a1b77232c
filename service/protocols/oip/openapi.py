"""OpenAPI entries of the Open Inference Protocol routes (``imgcls.service.protocols.oip.routes``).

``add_paths(spec)`` adds every ``/v2`` route, its request and response schemas (JSON form; the
binary tensor data extension is described on the infer route) to the document ``/docs.json`` serves.
"""
from __future__ import annotations

from typing import Any

from imgcls.service.protocols.oip.messages import EXTENSIONS, HEADER_LENGTH
from imgcls.service.protocols.oip.routes import MODEL, VERSION

TAG = "Open Inference Protocol (KServe v2)"
REF = "#/components/schemas/{name}"
TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "examples": ["BYTES", "UINT8", "FP32"]},
    "shape": {"type": "array", "items": {"type": "integer"}},
    "parameters": {"type": "object", "description": "binary_data_size (binary tensor data extension); on outputs "
                   "binary_data (bool) and classification (k)"},
    "data": {"type": "array", "description": "row-major values; BYTES elements of input 'image' are base64 strings"},
}}
SCHEMAS = {
    "OIPError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "OIPTensor": TENSOR,
    "OIPInferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "description": "echoed in the response"},
        "parameters": {"type": "object", "description": "binary_data_output (bool): every output in binary form"},
        "inputs": {"type": "array", "items": {"$ref": REF.format(name="OIPTensor")}, "minItems": 1, "maxItems": 1,
                   "description": "one tensor: 'image' BYTES [N] (encoded files) or 'pixels' UINT8 [N, 3, S, S]"},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string", "enum": ["probabilities"]}, "parameters": {"type": "object"}}}},
    }},
    "OIPInferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"$ref": REF.format(name="OIPTensor")}},
    }},
    "OIPServerMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}, "examples": [list(EXTENSIONS)]}}},
    "OIPModelMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": {"$ref": REF.format(name="OIPTensor")}},
        "outputs": {"type": "array", "items": {"$ref": REF.format(name="OIPTensor")}}}},
    "OIPReady": {"type": "object", "properties": {"ready": {"type": "boolean"}, "name": {"type": "string"}}},
    "OIPModelConfig": {"type": "object", "description": "Triton's model configuration (JSON form)", "properties": {
        "name": {"type": "string"}, "platform": {"type": "string"}, "max_batch_size": {"type": "integer"},
        "input": {"type": "array", "items": {"type": "object"}}, "output": {"type": "array", "items": {"type": "object"}},
        "dynamic_batching": {"type": "object"}}},
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "the served model name (GET /model 'name'; imgcls serve --model-name), or its "
                       "single-input view NAME.image (BYTES) or NAME.pixels (UINT8/FP32 NCHW)"}
VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the model version of the metadata's 'versions' (short sha256 of the ONNX file)"}


def _content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(name=name)}}}


def _get(summary: str, schema: str, errors: dict[str, tuple[str, str]], parameters: list[dict]) -> dict[str, Any]:
    """``errors``: status -> (description, schema name)."""
    responses = {"200": {"description": "true / the document", "content": _content(schema)}}
    responses.update({code: {"description": text, "content": _content(body)} for code, (text, body) in errors.items()})
    return {"get": {"tags": [TAG], "summary": summary, "parameters": parameters, "responses": responses}}


def _infer(parameters: list[dict]) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"},
              "description": f"binary tensor data extension: a JSON header of {HEADER_LENGTH} bytes, then the "
                             "binary inputs; BYTES elements as 4-byte little-endian length + bytes"}
    return {"post": {
        "tags": [TAG], "summary": "classify images (image BYTES [N] or pixels UINT8 [N, 3, S, S])",
        "parameters": [*parameters, {"name": HEADER_LENGTH, "in": "header", "required": False,
                                     "schema": {"type": "integer"}, "description": "length of the JSON header"},
                       {"name": "Content-Encoding", "in": "header", "required": False,
                        "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
                        "description": "a compressed body, inflated within the body limit (413 beyond)"}],
        "requestBody": {"required": True, "content": {**_content("OIPInferRequest"),
                                                      "application/octet-stream": binary}},
        "responses": {
            "200": {"description": "probabilities FP32 [N, C] (or classification BYTES [N, k])",
                    "content": {**_content("OIPInferResponse"), "application/octet-stream": binary}},
            "400": {"description": "bad tensor (datatype, shape, data) or an image that cannot be decoded "
                                   "(the message names image[i] and the reason code)", "content": _content("OIPError")},
            "404": {"description": "unknown model name or version", "content": _content("OIPError")},
            "413": {"description": "body, image count, image bytes or pixels over a limit",
                    "content": _content("OIPError")},
            "415": {"description": "an image in an unsupported format", "content": _content("OIPError")},
            "503": {"description": "warming up or overloaded; retry after Retry-After",
                    "content": _content("OIPError")},
        },
    }}


def add_paths(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the ``/v2`` routes and their schemas to ``spec`` (in place; returned for chaining)."""
    spec.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    paths = spec.setdefault("paths", {})
    not_ready = {"400": ("not ready (the protocol answers false with a 4xx), or a model name with path "
                         "characters", "OIPReady")}
    unknown = {"404": ("unknown model name or version", "OIPError"),
               "400": ("a model name with path characters (letters, digits, '.', '_', '-' only)", "OIPError")}
    paths["/v2"] = _get("server metadata and supported extensions", "OIPServerMetadata", {}, [])
    paths["/v2/health/live"] = _get("liveness", "OIPReady", {}, [])
    paths["/v2/health/ready"] = _get("readiness: every worker warmed (like /readyz)", "OIPReady", not_ready, [])
    for path, parameters in ((MODEL, [NAME]), (VERSION, [NAME, VERSION_PARAM])):
        paths[path] = _get("model metadata: inputs and outputs", "OIPModelMetadata", unknown, parameters)
        paths[path + "/ready"] = _get("model readiness", "OIPReady", {**unknown, **not_ready}, parameters)
        paths[path + "/infer"] = _infer(parameters)
        paths[path + "/config"] = _get("model configuration (Triton's extension): inputs with format and dims, "
                                       "max_batch_size, dynamic batching", "OIPModelConfig", unknown, parameters)
    return spec
