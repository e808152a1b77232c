"""The Open Inference Protocol over gRPC: the protocol's ``inference.GRPCInferenceService`` on the same engine.

``handlers(current, authorize, gate)`` returns a gRPC generic handler (``grpc.aio`` server) for ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer and RepositoryIndex;
the other methods of the service answer UNIMPLEMENTED. ``current()`` gives this worker's service,
as for the REST routes (``imgcls.service.protocols.oip.routes``), whose pieces are reused: model and
view names (``NAME``, ``NAME.image``, ``NAME.pixels``), version checks, the request parser
(``parse_document``: the gRPC request becomes the REST document plus its binary section), decoding,
the micro-batcher, the answer's outputs, reason codes and ``imgcls_oip_requests`` (route
``grpc:<Method>``). ModelInfer takes its input in ``raw_input_contents`` (BYTES elements
length-prefixed, as tritonclient sends them) or in the typed ``contents``, and answers in
``raw_output_contents``. Errors carry the status mapped from the REST one (``STATUS_CODES``) and the
same message; a message that is not the method's protobuf is INVALID_ARGUMENT. ``authorize(method,
metadata)`` is the host's API key check (``authorization: Bearer <key>`` metadata). ``gate`` (the host's
drain) admits each call (``enter()`` False: the server is shutting down, the call answers UNAVAILABLE)
and is told when an admitted call ends (``leave()``). ``spread`` (the host's, with several workers)
hands a ModelInfer call to a less busy worker, as its bytes were received (ModelInfer's handler then
takes the request unparsed and parses it only to run it here), whose answer (``Forwarded``) is
returned as is and counted in ``imgcls_oip_requests`` by that worker. Every call's duration, from the
handler's start to its answer or error, goes to ``imgcls_grpc_request_duration_seconds{method}`` on the
worker the client called (a handed call's time there includes the other worker's), once per call.
"""
from __future__ import annotations

import dataclasses
import logging
import struct
import time
from typing import Any, Awaitable, Callable, ContextManager, Protocol, Sequence

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

import imgcls
from imgcls.service.engine.types import EngineError
from imgcls.service.protocols.oip.messages import EXTENSIONS, InferRequest, ModelSpec, OIPError, parse_document
from imgcls.service.protocols.oip.response import encode_output
from imgcls.service.protocols.oip.routes import SERVER_NAME, metric_model, oip_error, run_parsed, served_model
from imgcls.service.protocols.oip.views import model_config, model_spec
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb
from imgcls.service.protocols.oip_grpc import model_config_pb2

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
                503: grpc.StatusCode.UNAVAILABLE}
Authorize = Callable[[str, Sequence[tuple[str, Any]]], bool]
SHUTTING_DOWN = "the server is shutting down: retry on another instance"


class Gate(Protocol):
    """Admits calls while the server serves (``context``: the call's, for its metadata); counts the
    admitted ones until they end."""

    def enter(self, context: Any) -> bool: ...

    def leave(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """The answer of another worker that ran the call: its serialised response, or its error status."""

    raw: bytes | None
    code: grpc.StatusCode | None = None
    details: str = ""


class Spread(Protocol):
    """Hands a ModelInfer call (its bytes as received) to another worker (``hand``: a ``Forwarded`` answer, or
    None: it runs here), counts the calls running here (``running_here()``) and tells a call another worker
    handed here (``handed``)."""

    async def hand(self, raw: bytes, context: Any) -> Forwarded | None: ...

    def handed(self, context: Any) -> bool: ...

    def running_here(self, context: Any) -> ContextManager[None]: ...


Handler = Callable[[Any, Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A request whose bytes are not the method's protobuf message."""

    error: str


def _parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Malformed(str(exc)[:200] or exc.__class__.__name__)

    return parse


# ---------------------------------------------------------------- health and metadata
async def server_live(_: Any, __: Any) -> Any:
    return pb.ServerLiveResponse(live=True)


async def server_ready(_: Any, service: Any) -> Any:
    return pb.ServerReadyResponse(ready=bool(service.__is_ready__()))


async def model_ready(request: Any, service: Any) -> Any:
    model, _ = served_model(service, request.name, request.version or None)
    return pb.ModelReadyResponse(ready=bool(service.__is_ready__()) and model.warmed)


async def server_metadata(_: Any, __: Any) -> Any:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=imgcls.__version__, extensions=list(EXTENSIONS))


async def model_metadata(request: Any, service: Any) -> Any:
    model, view = served_model(service, request.name, request.version or None)
    document = model_spec(model, view.view).metadata()
    tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in document[key]] for key in ("inputs", "outputs")}
    return pb.ModelMetadataResponse(name=document["name"], versions=document["versions"],
                                    platform=document["platform"], **tensors)


async def model_configuration(request: Any, service: Any) -> Any:
    model, view = served_model(service, request.name, request.version or None)
    config = json_format.ParseDict(model_config(model, view.view), model_config_pb2.ModelConfig())
    return pb.ModelConfigResponse(config=config)


async def repository_index(request: Any, service: Any) -> Any:
    entries = [e for e in service.models.index() if not request.ready or e.state == "READY"]
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in entries])


# ---------------------------------------------------------------- inference
def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as the REST document's plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _contents(tensor: Any) -> bytes | None:
    """The typed ``contents`` of a tensor as the binary form of its datatype (None: no contents)."""
    contents = tensor.contents
    if tensor.datatype == "BYTES" and contents.bytes_contents:
        return b"".join(struct.pack("<I", len(item)) + item for item in contents.bytes_contents)
    if tensor.datatype == "UINT8" and contents.uint_contents:
        values = np.asarray(contents.uint_contents, dtype=np.uint32)
        if values.size and values.max() > 255:
            raise OIPError(400, "input 'pixels': uint_contents must be within 0..255 (UINT8)", "bad_data")
        return values.astype(np.uint8).tobytes()
    if tensor.datatype == "FP32" and contents.fp32_contents:
        return np.asarray(contents.fp32_contents, dtype="<f4").tobytes()
    return None


def to_document(request: Any) -> tuple[dict[str, Any], bytes]:
    """The REST infer document and binary section equivalent to a ``ModelInferRequest``."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise OIPError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs", "bad_binary")
    inputs, binary = [], b""
    for index, tensor in enumerate(request.inputs):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                 "parameters": _parameters(tensor.parameters)}
        data = raw[index] if raw else _contents(tensor)
        if data is not None and len(request.inputs) == 1:
            entry["parameters"]["binary_data_size"] = len(data)
            binary = data
        inputs.append(entry)
    document: dict[str, Any] = {"inputs": inputs, "parameters": _parameters(request.parameters)}
    document["parameters"].pop("binary_data_output", None)
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": o.name, "parameters": {**_parameters(o.parameters), "binary_data": True}}
                               for o in request.outputs]
    return document, binary


def encode_response(parsed: InferRequest, spec: ModelSpec, probabilities: np.ndarray) -> Any:
    response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=parsed.id or "")
    for requested in parsed.outputs:
        tensor, raw = encode_output(dataclasses.replace(requested, binary=True), probabilities, spec.class_names)
        response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        response.raw_output_contents.append(raw or b"")
    return response


async def model_infer(request: Any, service: Any) -> Any:
    _, view = served_model(service, request.model_name, request.model_version or None)
    if not service.warmed():
        raise OIPError(503, "the model is still warming up", "not_ready")
    try:
        async with service.models.registry.use(view.model) as model:
            spec = model_spec(model, view.view)
            if request.model_version and request.model_version != spec.version:  # replaced since the check
                raise OIPError(404, f"model {view.name!r} no longer serves version {request.model_version[:80]!r} "
                                    f"(now {spec.version!r})", "unknown_version")
            parsed = parse_document(*to_document(request), spec)
            return encode_response(parsed, spec, await run_parsed(model, parsed))
    except EngineError as exc:
        raise oip_error(exc) from None


# ---------------------------------------------------------------- the service
METHODS: dict[str, tuple[Handler, Any, Any]] = {  # method -> (handler, request type, response type)
    "ServerLive": (server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelConfig": (model_configuration, pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelInfer": (model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    "RepositoryIndex": (repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}


def _model_name(request: Any) -> str:
    return getattr(request, "model_name", "") or getattr(request, "name", "")


def _method(method: str, handler: Handler, current: Callable[[], Any], authorize: Authorize, gate: Gate,
            spread: Spread | None, parse: Callable[[bytes], Any]) -> Handler:
    async def call(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return await answer(request, context)
        finally:
            service = current()
            if service is not None and not (spread is not None and spread.handed(context)):
                service.metrics.grpc_seconds.labels(method=method).observe(time.perf_counter() - started)

    async def answer(request: Any, context: Any) -> Any:
        service = current()
        outcome, reason, status, message, response = "ok", "none", 0, "", None
        if not gate.enter(context):
            outcome, reason, status, message = "rejected", "not_ready", 503, SHUTTING_DOWN
        else:
            try:
                if spread is not None and isinstance(request, bytes):  # ModelInfer: handed on as received, or parsed
                    response = await spread.hand(request, context)
                    request = parse(request) if response is None else request
                if response is None:
                    response = await _answer(method, handler, request, context, service, authorize, spread)
            except OIPError as exc:
                outcome, reason, status, message = "rejected", exc.reason, exc.status, exc.message
            finally:
                gate.leave()
        if not status and isinstance(response, Forwarded):  # counted by the worker that ran it
            if response.code is not None:
                await context.abort(response.code, response.details)
            return response
        if service is not None:
            name = "" if isinstance(request, Malformed) else _model_name(request)
            model = metric_model(service, name) if name else ""
            service.metrics.oip_requests.labels(route=f"grpc:{method}", model=model, outcome=outcome, reason=reason).inc()
        if status:
            await context.abort(STATUS_CODES.get(status, grpc.StatusCode.INTERNAL), message)
        return response

    call.__name__ = method
    return call


async def _answer(method: str, handler: Handler, request: Any, context: Any, service: Any, authorize: Authorize,
                  spread: Spread | None) -> Any:
    """The method's answer; OIPError for a malformed or unauthorised request or one the engine refuses."""
    if isinstance(request, Malformed):
        raise OIPError(400, f"the request is not a valid {method}Request message ({request.error})", "bad_protobuf")
    if not authorize(method, context.invocation_metadata() or ()):
        raise OIPError(401, "an API key is required: send the metadata authorization: Bearer <key>", "unauthorized")
    if service is None:
        raise OIPError(503, "the model is not loaded yet", "not_ready")
    if spread is not None and method == "ModelInfer":
        with spread.running_here(context):
            return await handler(request, service)
    return await handler(request, service)


def _serializer(response_type: Any) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        return response.raw if isinstance(response, Forwarded) else response_type.SerializeToString(response)

    return serialize


def handlers(current: Callable[[], Any], authorize: Authorize, gate: Gate,
             spread: Spread | None = None) -> grpc.GenericRpcHandler:
    """The service's methods for ``grpc.aio.server().add_generic_rpc_handlers``; with ``spread``, ModelInfer
    receives its request's bytes (handed on to another worker unparsed, or parsed to run here)."""
    methods = {}
    for name, (handler, request_type, response_type) in METHODS.items():
        raw = spread is not None and name == "ModelInfer"
        methods[name] = grpc.unary_unary_rpc_method_handler(
            _method(name, handler, current, authorize, gate, spread, _parser(request_type)),
            request_deserializer=None if raw else _parser(request_type), response_serializer=_serializer(response_type))
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def handed_infer(current: Callable[[], Any], authorize: Authorize, gate: Gate, spread: Spread) -> Handler:
    """ModelInfer's handler as ``handlers`` gives it to gRPC (request bytes in, response out; errors through
    ``context.abort``), for the calls another worker hands over (``imgcls.service.host.handoff``)."""
    handler, request_type, _ = METHODS["ModelInfer"]
    return _method("ModelInfer", handler, current, authorize, gate, spread, _parser(request_type))


def route_path(method: str) -> str:
    """The REST path of a method, for the host's public route groups (health)."""
    return {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready"}.get(method, f"/v2/grpc/{method}")

