"""Turn a ``POST /classify`` request into the engine's ``ClassifyRequest``, or one typed rejection.

Accepted bodies (all on the same route, chosen by ``Content-Type``):
- ``multipart/form-data``: every file part is an image, in order (any field name; ``images``
  is what clients and ``bentoml.SyncHTTPClient`` use); an optional ``top_k`` text field.
- ``application/json``: ``{"images": ["<base64>" | {"data": "<base64>", "name": "x.jpg"}], "top_k": 3}``.
- ``image/*`` or ``application/octet-stream``: the body is one image.
``?top_k=N`` in the query string works with every form (a body value wins); so does
``min_score`` (0..1: abstain below that top-1 score; a multipart text field or a JSON member too) and
``model`` (which served model answers; needed when several are served).
Only the syntax is checked here: defaults and ranges of ``top_k`` and ``model`` are the engine's.
The body is read with a byte limit before anything is parsed; nothing here decodes pixels.
"""
from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from imgcls.service.engine.types import ClassifyRequest, Upload
from imgcls.service.protocols.classify.schemas import REASON_STATUS
from imgcls.service.protocols.encoding import decode_base64

RAW_IMAGE_TYPES = ("application/octet-stream",)
MAX_TEXT_FIELDS = 8


class RequestRejected(Exception):
    """The whole request is refused; ``reason`` is a key of ``api.REASON_STATUS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    @property
    def status(self) -> int:
        return REASON_STATUS[self.reason]


def parse_min_score(raw: Any) -> float:
    """A number in [0, 1] (JSON number or decimal text)."""
    value = raw
    if isinstance(raw, str):
        text = raw.strip().strip('"')
        if len(text) > 40 or not re.fullmatch(r"[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
            raise RequestRejected("bad_min_score", f"min_score must be a number between 0 and 1, got {raw[:40]!r}")
        value = float(text)
    from imgcls.models.core.calibration import check_min_score  # NumPy's module: not in BentoML's arbiter

    try:
        return check_min_score(value)
    except ValueError as exc:
        raise RequestRejected("bad_min_score", str(exc)) from None


def parse_top_k(raw: Any) -> int:
    """An integer (JSON number or decimal text); its range and default are the engine's (``resolve_top_k``)."""
    if isinstance(raw, bool):
        raise RequestRejected("bad_top_k", f"top_k must be a positive integer, got {raw!r}")
    if isinstance(raw, str):
        text = raw.strip().strip('"')
        if not re.fullmatch(r"[+-]?\d{1,9}", text):
            raise RequestRejected("bad_top_k", f"top_k must be a positive integer, got {raw[:40]!r}")
        raw = int(text)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int):
        raise RequestRejected("bad_top_k", f"top_k must be a positive integer, got {str(raw)[:40]!r}")
    return raw


def parse_model(raw: Any) -> str:
    """A model name as sent (text); whether it names a served model is the engine's (``ModelRegistry.resolve``)."""
    if not isinstance(raw, str) or not raw.strip():
        raise RequestRejected("bad_model_name", f"model must be a model name (text), got {str(raw)[:40]!r}")
    return raw.strip()


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestRejected("body_too_large", f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise RequestRejected("body_too_large", f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_request(request: Request, *, max_body_bytes: int, max_images: int) -> ClassifyRequest:
    """Read and split the body; raises ``RequestRejected`` for anything not per-image."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query_top_k = request.query_params.get("top_k")
    top_k = parse_top_k(query_top_k) if query_top_k is not None else None
    query_min_score = request.query_params.get("min_score")
    min_score = parse_min_score(query_min_score) if query_min_score is not None else None
    query_model = request.query_params.get("model")
    model = parse_model(query_model) if query_model is not None else None
    if not (media_type in ("multipart/form-data", "application/json") or _is_raw_image(media_type)):
        shown = media_type or "none"
        raise RequestRejected(
            "unsupported_content_type",
            f"Content-Type {shown!r}: send multipart/form-data, application/json or image/*",
        )
    body = await read_body(request, max_body_bytes)
    fields: dict[str, Any] = {}
    if media_type == "multipart/form-data":
        uploads, body_top_k = await _parse_multipart(request, body, max_images, fields)
    elif media_type == "application/json":
        uploads, body_top_k = _parse_json(body, max_images, fields)
    else:
        uploads, body_top_k = (Upload(0, None, body),), None
    if not uploads:
        raise RequestRejected("no_images", "the request holds no images")
    if fields.get("min_score") is not None:
        min_score = parse_min_score(fields["min_score"])
    if fields.get("model") is not None:
        model = parse_model(fields["model"])
    return ClassifyRequest(uploads, body_top_k if body_top_k is not None else top_k, min_score, model)


def _is_raw_image(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in RAW_IMAGE_TYPES


async def _parse_multipart(
    request: Request, body: bytes, max_images: int, fields: dict[str, Any]
) -> tuple[tuple[Upload, ...], int | None]:
    """Files in order and top_k; ``fields`` receives the other known text fields (min_score)."""
    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=max_images, max_fields=MAX_TEXT_FIELDS, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "too many files" in exc.message.lower():
            raise RequestRejected("too_many_images", f"more than {max_images} images in one request") from exc
        raise RequestRejected("bad_multipart", exc.message) from exc
    try:
        uploads: list[Upload] = []
        top_k: int | None = None
        for name, value in form.multi_items():
            if isinstance(value, str):
                if name in ("min_score", "model"):
                    fields[name] = value
                    continue
                if name != "top_k":
                    raise RequestRejected("bad_field", f"unknown form field {name[:40]!r} (files, top_k, min_score "
                                                       "and model only)")
                top_k = parse_top_k(value)
                continue
            data = await value.read()
            uploads.append(Upload(len(uploads), value.filename, data))
        return tuple(uploads), top_k
    finally:
        await form.close()


def _parse_json(body: bytes, max_images: int, fields: dict[str, Any]) -> tuple[tuple[Upload, ...], int | None]:
    try:
        document = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected("bad_json", f"body is not valid JSON ({exc})") from exc
    except RecursionError:
        raise RequestRejected("bad_json", "JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise RequestRejected("bad_json", 'expected a JSON object {"images": [...], "top_k": k}')
    unknown = set(document) - {"images", "top_k", "min_score", "model"}
    if unknown:
        raise RequestRejected("bad_field", f"unknown field(s) {sorted(unknown)[:5]} (images, top_k, min_score and "
                                           "model only)")
    if document.get("model") is not None:
        fields["model"] = document["model"]
    if document.get("min_score") is not None:
        if isinstance(document["min_score"], str):
            raise RequestRejected("bad_min_score", f"min_score must be a JSON number, got {document['min_score'][:40]!r}")
        fields["min_score"] = document["min_score"]
    top_k = parse_top_k(document["top_k"]) if document.get("top_k") is not None else None
    images = document.get("images")
    if not isinstance(images, list):
        raise RequestRejected("bad_json", '"images" must be a list of base64 strings or {"data", "name"} objects')
    if len(images) > max_images:
        raise RequestRejected("too_many_images", f"{len(images)} images exceeds the limit of {max_images}")
    return tuple(_json_image(position, item) for position, item in enumerate(images)), top_k


def _json_image(position: int, item: Any) -> Upload:
    name = None
    if isinstance(item, dict):
        name = item.get("name") if isinstance(item.get("name"), str) else None
        if set(item) - {"data", "name"}:
            return Upload(position, name, None, ("bad_field", "image objects hold only 'data' and 'name'"))
        item = item.get("data")
    if not isinstance(item, str):
        return Upload(position, name, None, ("bad_base64", "expected a base64 string"))
    try:
        return Upload(position, name, decode_base64(item))
    except ValueError as exc:
        return Upload(position, name, None, ("bad_base64", str(exc)))
