"""The Open Inference Protocol (KServe v2) REST routes, served beside ``/classify`` by the same worker.

``build_routes(current)`` returns Starlette routes the host mounts like ``/model``; ``current()`` gives
this worker's service (or None before it exists): ``service.models`` (the host's ``ServedModels``:
``registry``, ``index()``, ``load(name)``, ``unload(name)``), ``service.metrics`` and
``service.warmed()``/``__is_ready__()``. Each model is ``/v2/models/{name}[/versions/{version}]``; the
routes share the engine with ``/classify``: the same decode pool, limits and reason codes
(``LoadedModel.decode_all``), the same micro-batcher and the same Prometheus metrics, plus
``imgcls_oip_requests{route, model, outcome, reason}``. The model repository extension:
``POST /v2/repository/index`` lists every model with its state, ``POST /v2/repository/models/{name}/load``
loads (or replaces) a model and answers once every worker serves it, ``.../unload`` removes it.
Each model also answers as its single-input views ``{name}.image`` and ``{name}.pixels``
(``imgcls.service.protocols.oip.views``), and Triton's model configuration extension
``GET /v2/models/{name}[/versions/{version}]/config`` describes each (inputs with format and dims,
``max_batch_size``, the dynamic batching in force).
Errors are the protocol's ``{"error": "..."}`` with a 4xx status for bad input (404 unknown model or
version, 400 bad tensor or a refused bundle, 413 over a limit), 503 only while warming up or
overloaded. Every path under ``/v2`` answers that JSON, known or not: a wrong method is 405 (with
``Allow``), an unknown path 404 (``/v2/{path}``, the last route). Readiness (server and model) is
``/readyz``'s: every worker warmed; per the protocol a 4xx (400) means "not ready".
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import imgcls
from imgcls.service.engine.types import EngineError, Upload
from imgcls.service.protocols.oip.messages import (
    EXTENSIONS, HEADER_LENGTH, InferRequest, ModelSpec, OIPError, decompress, json_length, parse_infer,
)
from imgcls.service.protocols.oip.response import encode_infer, error_document
from imgcls.service.protocols.oip.views import ViewName, model_config, model_spec, parse_view, resolve
from imgcls.service.protocols.classify.schemas import REASON_STATUS
from imgcls.service.protocols.classify.uploads import RequestRejected, read_body

if TYPE_CHECKING:  # ONNX Runtime and NumPy: imported by the workers' engine, not by the arbiter that reads this module
    import numpy as np

    from imgcls.service.engine.classifier import LoadedModel

log = logging.getLogger(__name__)
SERVER_NAME = "imgcls"
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
REPOSITORY = "/v2/repository/models/{name}"
FIXED_ROUTES = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index")
MODEL_ROUTES = (MODEL, VERSION, MODEL + "/ready", VERSION + "/ready", MODEL + "/infer", VERSION + "/infer",
                MODEL + "/config", VERSION + "/config", REPOSITORY + "/load", REPOSITORY + "/unload")
ENGINE_STATUS = {"unknown_model": 404, "bad_model_name": 400, "model_required": 400, "load_refused": 400,
                 "bad_top_k": 400, "not_ready": 503, "overloaded": 503, "sync_incomplete": 503}
PARSE_IN_THREAD_BYTES = 256 * 1024  # bigger JSON parts (JSON pixels, many base64 images) are parsed off the event loop
MAX_LISTED_FAILURES = 5
Handler = Callable[[Request, Any], Awaitable[Response]]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def oip_error(exc: EngineError) -> OIPError:
    """The engine's typed refusal as the protocol's error (the one place its status is chosen)."""
    return OIPError(ENGINE_STATUS.get(exc.reason, 500), exc.message, exc.reason)


def served_model(service: Any, name: str, version: str | None) -> tuple[LoadedModel, ViewName]:
    """The served model a name or view name refers to, checked against the version asked for (if any)."""
    try:
        model, view = resolve(name, service.models.registry)
    except EngineError as exc:
        raise oip_error(exc) from None
    spec_version = model_spec(model).version
    if version is not None and version != spec_version:
        raise OIPError(404, f"model {view.name!r} has no version {version[:80]!r} (it serves {spec_version!r})",
                       "unknown_version")
    return model, view


def _model(request: Request, service: Any) -> tuple[LoadedModel, ViewName]:
    """The served model the path names (and its version, when the path names one)."""
    return served_model(service, request.path_params["name"], request.path_params.get("version"))


def _headers(model: LoadedModel) -> dict[str, str]:
    return {"X-Model-Version": model.info.version, "X-Model-Name": model.name}


# ---------------------------------------------------------------- handlers
async def server_metadata(_: Request, __: Any) -> Response:
    return _json(200, {"name": SERVER_NAME, "version": imgcls.__version__, "extensions": list(EXTENSIONS)})


async def live(_: Request, __: Any) -> Response:
    return _json(200, {"live": True})


async def ready(_: Request, service: Any) -> Response:
    is_ready = bool(service.__is_ready__())
    return _json(200 if is_ready else 400, {"ready": is_ready})


async def model_metadata(request: Request, service: Any) -> Response:
    model, view = _model(request, service)
    return _json(200, model_spec(model, view.view).metadata(), _headers(model))


async def model_configuration(request: Request, service: Any) -> Response:
    model, view = _model(request, service)
    return _json(200, model_config(model, view.view), _headers(model))


async def model_ready(request: Request, service: Any) -> Response:
    model, view = _model(request, service)
    is_ready = bool(service.__is_ready__()) and model.warmed
    return _json(200 if is_ready else 400, {"name": view.name, "ready": is_ready}, _headers(model))


async def infer(request: Request, service: Any) -> Response:
    _, view = _model(request, service)  # an unknown model or version: 404 before the body is read
    limit = service.models.registry.settings.max_body_bytes
    try:
        body = await read_body(request, limit)
    except RequestRejected as exc:
        raise OIPError(exc.status, exc.message, exc.reason) from None
    if not service.warmed():
        raise OIPError(503, "the model is still warming up", "not_ready")
    try:
        async with service.models.registry.use(view.model) as model:
            return await _infer(request, body, model, view.view)
    except EngineError as exc:
        raise oip_error(exc) from None


async def _infer(request: Request, body: bytes, model: LoadedModel, view: str) -> Response:
    """Parse, decode, infer and encode on one model version (held by the caller until this returns)."""
    spec = model_spec(model, view)
    version = request.path_params.get("version")
    if version is not None and version != spec.version:  # replaced since the check above
        raise OIPError(404, f"model {model.name!r} no longer serves version {version[:80]!r} (now {spec.version!r})",
                       "unknown_version")
    limit = model.settings.max_body_bytes
    encoding, header_length = request.headers.get("content-encoding"), request.headers.get(HEADER_LENGTH)
    work = functools.partial(_parse, body, encoding, header_length, spec, limit)
    # big JSON (or inflating) bodies: off the event loop. A binary tensor part costs a slice, not a parse:
    # sent to the decode threads, a camera JPEG queued behind the decodes there (p99 at 16 clients).
    # (A compressed body's header length counts inflated bytes: it is checked after inflating.)
    if encoding or json_length(len(body), header_length) > PARSE_IN_THREAD_BYTES:
        parsed = await asyncio.get_running_loop().run_in_executor(model.predictor.decode_pool(), work)
    else:
        parsed = work()
    probabilities = await run_parsed(model, parsed)
    content, headers = encode_infer(parsed, spec, probabilities)
    return Response(content, status_code=200, headers={**_headers(model), **headers})


# ---------------------------------------------------------------- the model repository extension
async def repository_index(_: Request, service: Any) -> Response:
    return _json(200, [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                       for e in service.models.index()])


async def repository_load(request: Request, service: Any) -> Response:
    try:
        info, workers = await service.models.load(request.path_params["name"])
    except EngineError as exc:
        raise oip_error(exc) from None
    return _json(200, {"name": info.name, "version": info.version, "state": "READY", "workers": workers})


async def repository_unload(request: Request, service: Any) -> Response:
    try:
        info, workers = await service.models.unload(request.path_params["name"])
    except EngineError as exc:
        raise oip_error(exc) from None
    return _json(200, {"name": info.name, "version": info.version, "state": "UNAVAILABLE", "workers": workers})


async def run_parsed(model: LoadedModel, parsed: InferRequest) -> np.ndarray:
    """Probabilities for a parsed request: its pixels, or its images decoded like ``/classify``'s."""
    pixels = await _pixels(model, parsed)
    job = await model.infer(pixels)
    model.record_classified(job.probabilities)
    return job.probabilities


def _parse(body: bytes, encoding: str | None, header_length: str | None, spec: ModelSpec, limit: int) -> InferRequest:
    return parse_infer(decompress(body, encoding, limit), header_length, spec)


async def _pixels(engine: LoadedModel, parsed: InferRequest) -> np.ndarray:
    """The uint8 model input: the client's pixels, or the images decoded like ``/classify`` decodes them."""
    if parsed.images is None:
        assert parsed.pixels is not None
        return parsed.pixels
    decoded = await engine.decode_all([Upload(i, None, data) for i, data in enumerate(parsed.images)])
    failures = [(item.upload.position, item.error) for item in decoded if item.error is not None]
    if not failures:
        import numpy as np  # here, not at import (see TYPE_CHECKING above)

        return np.stack([item.pixels for item in decoded])
    for _, error in failures:
        engine.metrics.images.labels(model=engine.name, outcome="failed", reason=error.reason).inc()
    statuses = {REASON_STATUS.get(error.reason, 400) for _, error in failures}
    reasons = {error.reason for _, error in failures}
    listed = "; ".join(f"image[{i}]: {e.reason}: {e.message}" for i, e in failures[:MAX_LISTED_FAILURES])
    more = f" (and {len(failures) - MAX_LISTED_FAILURES} more)" if len(failures) > MAX_LISTED_FAILURES else ""
    status = statuses.pop() if len(statuses) == 1 else REASON_STATUS["all_images_failed"]
    reason = reasons.pop() if len(reasons) == 1 else "all_images_failed"
    raise OIPError(status, f"{len(failures)} of {len(decoded)} images could not be decoded: {listed}{more}", reason)


# ---------------------------------------------------------------- routes
UNKNOWN_PATH = "/v2/{path:path}"  # anything else under /v2: the metrics label it "unmatched"


class _AnyMethod:
    """An ASGI endpoint taking every method: the handler answers a wrong one (Starlette's own 405 is plain text)."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


def _endpoint(template: str, handler: Handler, method: str | None,
              current: Callable[[], Any]) -> Callable[[Request], Awaitable[Response]]:
    """``method``: the one the route takes (GET takes HEAD too); None: any."""
    allowed = (method, "HEAD") if method == "GET" else (method,)

    async def endpoint(request: Request) -> Response:
        service = current()
        outcome, reason, headers = "ok", "none", None
        try:
            if method is not None and request.method not in allowed:
                headers = {"Allow": ", ".join(allowed)}
                raise OIPError(405, f"{request.method[:20]} {template}: use {method}", "method_not_allowed")
            if service is None:
                raise OIPError(503, "the model is not loaded yet", "not_ready")
            response = await handler(request, service)
        except OIPError as exc:
            outcome, reason = "rejected", exc.reason
            headers = {"Retry-After": "1"} if exc.status == 503 else headers
            response = _json(exc.status, error_document(exc.message), headers)
        if service is not None:
            model = metric_model(service, request.path_params.get("name", ""))
            service.metrics.oip_requests.labels(route=template, model=model, outcome=outcome, reason=reason).inc()
        return response

    endpoint.__name__ = handler.__name__
    return endpoint


def metric_model(service: Any, name: str) -> str:
    """The served model a name or view name refers to, else "" (bounded: served names only)."""
    model = parse_view(name, service.models.registry).model
    return model if model in service.models.registry.names() else ""


async def unknown_path(request: Request, _: Any) -> Response:
    raise OIPError(404, f"no such path {request.url.path[:120]!r}: the Open Inference Protocol routes are /v2, "
                        "/v2/health/{live,ready}, /v2/models/{name}[/versions/{version}][/ready|/infer|/config], "
                        "/v2/repository/index "
                        "and /v2/repository/models/{name}/load|unload",
                   "unknown_path")


def build_routes(current: Callable[[], Any]) -> list[Route]:
    """Every OIP route (the ``/versions/{version}`` forms too), for a Starlette app mounted at "/"."""
    table: list[tuple[str, Handler, str]] = [
        ("/v2", server_metadata, "GET"), ("/v2/health/live", live, "GET"), ("/v2/health/ready", ready, "GET"),
        (MODEL, model_metadata, "GET"), (VERSION, model_metadata, "GET"),
        (MODEL + "/ready", model_ready, "GET"), (VERSION + "/ready", model_ready, "GET"),
        (MODEL + "/config", model_configuration, "GET"), (VERSION + "/config", model_configuration, "GET"),
        (MODEL + "/infer", infer, "POST"), (VERSION + "/infer", infer, "POST"),
        ("/v2/repository/index", repository_index, "POST"),
        (REPOSITORY + "/load", repository_load, "POST"), (REPOSITORY + "/unload", repository_unload, "POST"),
    ]
    routes = [Route(path, _AnyMethod(_endpoint(path, handler, method, current))) for path, handler, method in table]
    # the label "unmatched" (as the HTTP metrics): the raw path never becomes a label value
    catch_all = _endpoint("unmatched", unknown_path, None, current)
    return [*routes, Route(UNKNOWN_PATH, _AnyMethod(catch_all))]
