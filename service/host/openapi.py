"""Complete BentoML's OpenAPI document with what it cannot express by itself.

BentoML documents one request media type per route and generic error bodies, and knows nothing
about routes served by mounted apps. ``augment(spec)`` adds to ``POST /classify`` the JSON
(base64) and raw-image request forms and our error responses (``ErrorResponse`` for 400, 413, 415,
503), and adds ``GET /model`` (``ModelSummary``), with every schema in ``components``; its ``info`` is
imgcls's title, version and description (with a link to the ``/ui`` upload page).
"""
from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

import imgcls
from imgcls.service.protocols.oip import openapi as oip_openapi
from imgcls.service.protocols.classify.schemas import ClassifyJSONRequest, ClassifyResponse, ErrorResponse, ModelSummary

REF = "#/components/schemas/{model}"
ERROR_STATUSES = {
    400: "bad input: not_an_image, truncated, corrupt, empty, bad_base64, bad_top_k, bad_min_score, bad_json, bad_multipart, "
         "bad_field, no_images, all_images_failed (nothing in the request could be classified), model_required "
         "(several models are served: name one), bad_model_name (path characters)",
    401: "unauthorized: API keys are required and the request's Authorization: Bearer key is missing or wrong",
    404: "unknown_model: no served model has that name",
    413: "over a limit: body_too_large, too_many_images, too_large (one image's bytes), too_many_pixels",
    415: "unsupported_content_type (the request) or unsupported_format (the image)",
    503: "overloaded (inference queue full) or not_ready (warming up); retry after the Retry-After header",
}


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(ClassifyJSONRequest, "validation"), (ClassifyResponse, "serialization"), (ErrorResponse, "serialization"),
         (ModelSummary, "serialization")],
        ref_template=REF,
    )
    return top.get("$defs", {})


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model)}}}


def describe(models: list[dict[str, Any]] | None) -> dict[str, Any]:
    """imgcls's own ``info`` (BentoML's says "a Machine Learning Service created with BentoML", version None)."""
    served = "".join(f"\n\nServing **{m['name']}** version `{m['version']}` ({m['arch']}, {m['precision']}, "
                     f"{m['num_classes']} classes)." for m in models or [])
    return {
        "title": "imgcls image classification",
        "version": imgcls.__version__,
        "description": (
            "Classify images with a fine-tuned CNN/ViT exported to ONNX. **Try it in the browser: "
            "[the upload page](/ui).**\n\n`POST /classify` takes one or several images (multipart, JSON "
            "base64 or a raw image body) and answers top-k labels per image; `GET /model` describes the model; "
            "`/livez`, `/readyz` and `/metrics` are for orchestrators and Prometheus." + served
        ),
    }


def augment(spec: dict[str, Any], models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``models``: the served models' summaries (named in the description), or None before they are loaded."""
    spec = copy.deepcopy(spec)
    spec["info"] = describe(models)  # not BentoML's boilerplate, contact and badges
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_schemas())
    classify = spec.get("paths", {}).get("/classify", {}).get("post")
    if classify is not None:
        content = classify.setdefault("requestBody", {}).setdefault("content", {})
        content.update(_json("ClassifyJSONRequest"))
        content["image/*"] = {"schema": {"type": "string", "format": "binary"}}
        responses = classify.setdefault("responses", {})
        responses["200"] = {"description": "per image: top-k predictions or that image's error",
                            "content": _json("ClassifyResponse")}
        responses.pop(200, None)
        for code in ("400", "404", "500", 400, 404, 500):
            responses.pop(code, None)
        for status, description in ERROR_STATUSES.items():
            responses[str(status)] = {"description": description, "content": _json("ErrorResponse")}
        classify.setdefault("parameters", []).append({
            "name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "predictions per image (default 5, clamped to the class count); a body value wins",
        })
        classify["parameters"].append({
            "name": "model", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "which served model answers (GET /models lists them); may be left out when one model "
                           "is served; a body value wins",
        })
        classify["parameters"].append({
            "name": "min_score", "in": "query", "required": False,
            "schema": {"type": "number", "minimum": 0, "maximum": 1},
            "description": "abstain (result.abstained = true) when the top-1 calibrated score is below this; "
                           "default: the card's calibration.min_score; 0: never; a body value wins",
        })
    model_parameter = {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                       "description": "which model (may be left out when one model is served)"}
    spec.setdefault("paths", {})["/model"] = {"get": {
        "tags": ["Service APIs"], "operationId": "imgcls__model", "description": "the model card summary",
        "parameters": [model_parameter],
        "responses": {"200": {"description": "what is being served", "content": _json("ModelSummary")},
                      "400": {"description": "several models are served and none was named",
                              "content": _json("ErrorResponse")},
                      "404": {"description": "unknown model", "content": _json("ErrorResponse")},
                      "503": {"description": "not_ready", "content": _json("ErrorResponse")}},
    }}
    spec["paths"]["/models"] = {"get": {
        "tags": ["Service APIs"], "operationId": "imgcls__models", "description": "every served model",
        "responses": {"200": {"description": '{"models": [ModelSummary, ...]}', "content": {"application/json": {
            "schema": {"type": "object", "properties": {"models": {"type": "array", "items": {
                "$ref": REF.format(model="ModelSummary")}}}}}}}},
    }}
    return oip_openapi.add_paths(spec)
