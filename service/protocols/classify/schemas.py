"""The HTTP contract of ``POST /classify`` and ``GET /model``: pydantic models and reason codes.

Every error the service answers is JSON ``{"error": {"status", "reason", "message"}}`` with one of
the reason codes of ``REASON_STATUS``; a failed image inside a multi-image request carries the same
``error`` object in its own result while the other images are classified normally.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from imgcls.service.prediction import Prediction  # the one prediction type, shared with scoring

# reason code -> HTTP status. Image reasons come from imgcls.models.core.preprocess.REASONS.
REASON_STATUS: dict[str, int] = {
    # the request as a whole
    "bad_top_k": 400,
    "bad_model_name": 400,
    "model_required": 400,
    "unknown_model": 404,
    "load_refused": 400,
    "unauthorized": 401,
    "bad_min_score": 400,
    "bad_json": 400,
    "bad_multipart": 400,
    "bad_base64": 400,
    "bad_field": 400,
    "no_images": 400,
    "body_too_large": 413,
    "too_many_images": 413,
    "unsupported_content_type": 415,
    "method_not_allowed": 405,
    "overloaded": 503,
    "not_ready": 503,
    "internal": 500,
    # one image (imgcls.models.core.preprocess.REASONS)
    "not_found": 400,  # paths: batch scoring only
    "unreadable": 400,
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "corrupt": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported_format": 415,
}
MULTIPLE_REASONS = "all_images_failed"  # every image failed, for different reasons
REASON_STATUS[MULTIPLE_REASONS] = 400
VERSION_HEADER = "X-Model-Version"
MODEL_HEADER = "X-Model-Name"


class ErrorDetail(BaseModel):
    status: int = Field(description="HTTP status this error maps to", examples=[400])
    reason: str = Field(description="machine-readable reason code", examples=["not_an_image"])
    message: str = Field(description="what went wrong, for humans")


class ImageTiming(BaseModel):
    decode_ms: float = Field(description="decode + resize + crop of this image")


class ImageResult(BaseModel):
    position: int = Field(description="0-based position of the image in the request")
    filename: Optional[str] = Field(default=None, description="multipart filename or JSON 'name', if given")
    predictions: Optional[list[Prediction]] = Field(
        default=None, description="top-k, best first (label = class name, index = logit position, score = "
                                  "calibrated probability softmax(logits / card temperature), uncalibrated_score = "
                                  "softmax(logits)); null on error")
    error: Optional[ErrorDetail] = Field(default=None, description="why this image was not classified")
    abstained: Optional[bool] = Field(
        default=None, description="true when the top-1 score is below min_score: the model declines to answer "
        "(predictions are still listed); null on error")
    timing: Optional[ImageTiming] = None


class ModelRef(BaseModel):
    name: str = Field(description="bundle name (its directory name)")
    version: str = Field(description="model version that answered: <bundle folder>@<short sha256 of the ONNX file>")
    arch: str
    precision: str
    provider: str = Field(description="ONNX Runtime execution provider actually running")


class RequestTiming(BaseModel):
    decode_ms: float = Field(description="wall time decoding all images of the request (in parallel)")
    queue_ms: float = Field(description="wait for the batcher (other requests' batches)")
    inference_ms: float = Field(description="ONNX Runtime time of the batch(es) holding these images")
    total_ms: float = Field(description="server time from parsed request to response")


class ClassifyResponse(BaseModel):
    model: ModelRef
    top_k: int = Field(description="k actually used (the request's top_k clamped to the class count)")
    min_score: Optional[float] = Field(default=None, description="abstention threshold applied (null: none)")
    results: list[ImageResult]
    timing: RequestTiming


class ErrorResponse(BaseModel):
    error: ErrorDetail
    results: Optional[list[ImageResult]] = Field(
        default=None, description="per-image outcomes when every image of the request failed"
    )


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="base64 (standard or URL-safe) of the encoded image file; a data: URL prefix is accepted")
    name: Optional[str] = Field(default=None, description="echoed as filename in the result")


class ClassifyJSONRequest(BaseModel):
    """``Content-Type: application/json`` form of ``POST /classify``."""

    model_config = ConfigDict(extra="forbid")
    images: list[Base64Image | str] = Field(description="base64 images: strings or {data, name} objects")
    top_k: Optional[int] = Field(default=None, description="predictions per image (default 5, clamped)")
    min_score: Optional[float] = Field(default=None, description="abstain below this top-1 score (default: the card's)")
    model: Optional[str] = Field(default=None, description="which served model answers (needed when several are served)")


class ModelSummary(BaseModel):
    """``GET /model``: what is being served."""

    name: str
    version: str
    arch: str
    base_weights: str
    class_names: list[str]
    num_classes: int
    preprocess: dict[str, Any]
    input: dict[str, Any] = Field(description="the ONNX input: name, dtype, layout, height, width")
    precision: str
    provider: str
    device: str
    files: dict[str, Any] = Field(description="card.export.files: ONNX files of the bundle")
    export: dict[str, Any] = Field(description="card.export figures: opset, exporter, parity, int8")
    metrics: dict[str, Any] = Field(description="card.metrics: validation results at training time")
    lineage: dict[str, Any]
    calibration: dict[str, Any] = Field(default_factory=dict, description="card.calibration: temperature applied "
                                        "to the logits, how it was fitted, ECE/NLL before and after, min_score")
    batching: dict[str, Any] = Field(description="batch sizes the server runs (each warmed up at start)")
    limits: dict[str, Any] = Field(description="request limits: body bytes, images, image bytes, pixels")


def error_body(reason: str, message: str, results: list[ImageResult] | None = None) -> dict[str, Any]:
    detail = ErrorDetail(status=REASON_STATUS[reason], reason=reason, message=message)
    return ErrorResponse(error=detail, results=results).model_dump(exclude_none=True)
