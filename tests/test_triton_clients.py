"""The clients Triton users run, against the real `imgcls serve` with the stock ImageNet bundle.

One server for the module (`imgcls export --pretrained efficientnet_lite0`, 2 workers, HTTP and
`--grpc-port`), real photos from scikit-image. `image_client_sequence` is the sequence Triton's
example `image_client.py` runs, written here with tritonclient (HTTP and gRPC): model metadata (one
input, one FP32 vector output), model configuration (max_batch_size, NCHW/NHWC), a bilinear resize
to the declared shape and datatype without crop or normalisation, infer with the classification
extension, and the binary BYTES answers `score:index:label` parsed. Then gRPC against HTTP (same
files, identical answers) and bad input over gRPC.
"""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from imgcls.export.pretrained import reference_photo
from imgcls.service.host.launcher import LOOPBACK, free_port, start_server
from tests.factories import STOCK_FAMILIES, make_stock_bundle

pytestmark = pytest.mark.slow  # the export of a 1000-class model and a server start

NAME = "stock"
FAMILIES = {photo: STOCK_FAMILIES[photo] for photo in ("chelsea", "coffee")}  # photo -> classes its top-1 may be
MAX_BODY = 2_000_000
SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_stock_bundle(tmp_path_factory.mktemp("stock"))


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """The photos as JPEG files (what users send)."""
    files = {}
    for name in FAMILIES:
        buffer = io.BytesIO()
        reference_photo(name).save(buffer, format="JPEG", quality=92)
        files[name] = buffer.getvalue()
    return files


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    grpc_port = free_port()
    handle = start_server(bundle, tmp_path_factory.mktemp("triton-log") / "serve.log", ready_timeout=120.0,
                          args=["--model-name", NAME, "--grpc-port", str(grpc_port), "--workers", "2",
                                "--max-body-bytes", str(MAX_BODY), "--max-images", "4"])
    handle.grpc_url = f"{LOOPBACK}:{grpc_port}"
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def http_client(server):
    return triton_http.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(server):
    return triton_grpc.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_url) as opened:
        yield opened


# ---------------------------------------------------------------- Triton's image_client.py sequence
def _model_description(client, protocol: str, name: str) -> dict:
    """What image_client.py reads of the metadata and configuration, from either client's answer types."""
    metadata, config = client.get_model_metadata(name), client.get_model_config(name)
    if protocol == "grpc":  # protobuf messages, as image_client.py reads them
        config = config.config
        inputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs]
        outputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs]
        formats = [model_config_pb2.ModelInput.Format.Name(i.format) for i in config.input]
        max_batch_size = config.max_batch_size
    else:
        inputs = [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]]
        outputs = [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]]
        formats = [i["format"] for i in config["input"]]
        max_batch_size = config["max_batch_size"]
    return dict(inputs=inputs, outputs=outputs, formats=formats, max_batch_size=max_batch_size)


def image_client_sequence(client, protocol: str, name: str, photo: bytes, datatype: str | None = None) -> list:
    described = _model_description(client, protocol, name)
    assert len(described["inputs"]) == 1 and len(described["outputs"]) == 1, described
    (input_name, input_type, shape), = described["inputs"]
    (output_name, output_type, output_shape), = described["outputs"]
    assert output_type == "FP32" and sum(d > 1 for d in output_shape[1:]) == 1, described  # a vector
    assert described["max_batch_size"] > 0 and len(shape) == 4, described
    layout, = described["formats"]
    assert layout in ("FORMAT_NCHW", "FORMAT_NHWC"), described
    c, h, w = shape[1:] if layout == "FORMAT_NCHW" else (shape[3], shape[1], shape[2])
    assert c == 3
    datatype = datatype or input_type
    image = Image.open(io.BytesIO(photo)).convert("RGB").resize((w, h), Image.BILINEAR)  # no crop
    array = np.asarray(image).astype(triton_to_np_dtype(datatype))  # no normalisation (scaling NONE)
    if layout == "FORMAT_NCHW":
        array = np.transpose(array, (2, 0, 1))
    batch = np.stack([array])
    module = triton_grpc if protocol == "grpc" else triton_http
    tensor = module.InferInput(input_name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    output = module.InferRequestedOutput(output_name, class_count=3)
    answer = client.infer(name, [tensor], outputs=[output]).as_numpy(output_name)
    assert answer.shape == (1, 3) and all(isinstance(item, bytes) for item in answer[0])  # binary BYTES
    parsed = []
    for item in answer[0]:
        score, index, label = item.decode().split(":", 2)
        parsed.append((float(score), int(index), label))
    assert [p[0] for p in parsed] == sorted((p[0] for p in parsed), reverse=True)
    return parsed


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client_sequence_finds_the_right_classes(protocol, http_client, grpc_client, photos):
    client = grpc_client if protocol == "grpc" else http_client
    with pytest.raises(AssertionError, match="len"):  # the model itself declares two inputs: image_client stops
        image_client_sequence(client, protocol, NAME, photos["chelsea"])
    for photo, family in FAMILIES.items():
        top = image_client_sequence(client, protocol, NAME + ".pixels", photos[photo])
        assert top[0][2] in family, (photo, top)
        as_floats = image_client_sequence(client, protocol, NAME + ".pixels", photos[photo], datatype="FP32")
        assert as_floats == top  # FP32 pixels 0..255: the same answer


# ---------------------------------------------------------------- gRPC answers as HTTP answers
def test_grpc_health_metadata_and_config_equal_http(http_client, grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.get_server_metadata(as_json=True)["extensions"] == http_client.get_server_metadata()["extensions"]
    for name in (NAME, NAME + ".image", NAME + ".pixels"):
        assert grpc_client.is_model_ready(name)
        ours = json_format.MessageToDict(grpc_client.get_model_metadata(name), preserving_proto_field_name=True)
        theirs = http_client.get_model_metadata(name)
        for tensors in ("inputs", "outputs"):
            for tensor in ours[tensors]:
                tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert ours == theirs
        config = json_format.ParseDict(http_client.get_model_config(name), model_config_pb2.ModelConfig())
        assert grpc_client.get_model_config(name).config == config
        version = theirs["versions"][0]
        assert grpc_client.get_model_config(name, model_version=version).config == config
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["state"]) for m in index] == [(NAME, "READY")]


def _image_tensor(module, files: list[bytes]):
    tensor = module.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    return tensor


def test_grpc_infer_answers_exactly_as_http(http_client, grpc_client, photos):
    files = list(photos.values())
    for name in (NAME, NAME + ".image"):
        got = grpc_client.infer(name, [_image_tensor(triton_grpc, files)], request_id="g1")
        assert got.get_response().model_name == name and got.get_response().id == "g1"
        expected = http_client.infer(name, [_image_tensor(triton_http, files)]).as_numpy("probabilities")
        np.testing.assert_array_equal(got.as_numpy("probabilities"), expected)
        top = [triton_grpc.InferRequestedOutput("probabilities", class_count=5)]
        top_http = [triton_http.InferRequestedOutput("probabilities", class_count=5)]
        np.testing.assert_array_equal(
            grpc_client.infer(name, [_image_tensor(triton_grpc, files)], outputs=top).as_numpy("probabilities"),
            http_client.infer(name, [_image_tensor(triton_http, files)], outputs=top_http).as_numpy("probabilities"))
    pixels = np.stack([np.transpose(np.asarray(Image.open(io.BytesIO(f)).convert("RGB").resize((224, 224))), (2, 0, 1))
                       for f in files])
    answers = []
    for module, client in ((triton_grpc, grpc_client), (triton_http, http_client)):
        tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        answers.append(client.infer(NAME + ".pixels", [tensor]).as_numpy("probabilities"))
    np.testing.assert_array_equal(*answers)


# ---------------------------------------------------------------- bad input over gRPC
def _raw_infer(channel, body: bytes) -> grpc.RpcError:
    call = channel.unary_unary(SERVICE + "ModelInfer")  # bytes in, bytes out: anything can be sent
    with pytest.raises(grpc.RpcError) as raised:
        call(body, timeout=30)
    return raised.value


def _request(model: str = NAME, **tensor) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(**tensor)
    return request


def test_bad_input_over_grpc_gets_the_protocols_status(grpc_client, channel, photos, server):
    jpeg = photos["coffee"]
    cases = {
        "unknown model": (_request("nope", name="image", datatype="BYTES", shape=[1]), grpc.StatusCode.NOT_FOUND, "nope"),
        "unknown version": (service_pb2.ModelInferRequest(model_name=NAME, model_version="0"), grpc.StatusCode.NOT_FOUND,
                            "no version"),
        "wrong datatype": (_request(name="image", datatype="UINT8", shape=[1]), grpc.StatusCode.INVALID_ARGUMENT,
                           "datatype"),
        "wrong shape": (_request(f"{NAME}.pixels", name="pixels", datatype="UINT8", shape=[1, 3, 8, 8]),
                        grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        "no data": (_request(name="image", datatype="BYTES", shape=[1]), grpc.StatusCode.INVALID_ARGUMENT, "neither"),
        "too many images": (_request(name="image", datatype="BYTES", shape=[5]), grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "limit of 4"),
    }
    truncated = _request(name="image", datatype="BYTES", shape=[1])
    truncated.raw_input_contents.append(len(jpeg).to_bytes(4, "little") + jpeg[:100])
    cases["truncated BYTES element"] = (truncated, grpc.StatusCode.INVALID_ARGUMENT, "claims")
    not_image = _request(name="image", datatype="BYTES", shape=[1])
    not_image.raw_input_contents.append((9).to_bytes(4, "little") + b"not a jpg")
    cases["not an image"] = (not_image, grpc.StatusCode.INVALID_ARGUMENT, "image[0]")
    two_raw = _request(name="image", datatype="BYTES", shape=[1])
    two_raw.raw_input_contents.extend([b"", b""])
    cases["raw contents for no input"] = (two_raw, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")
    for case, (request, code, needle) in cases.items():
        error = _raw_infer(channel, request.SerializeToString())
        assert error.code() == code and needle in error.details(), (case, error.code(), error.details())
    malformed = _raw_infer(channel, b"\x0a\xff\xff\xff\xff\x0f")  # a length running past the end
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in malformed.details()
    oversized = _request(name="image", datatype="BYTES", shape=[1])
    oversized.raw_input_contents.append(b"\0" * (MAX_BODY + 10))
    assert _raw_infer(channel, oversized.SerializeToString()).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(InferenceServerException) as raised:  # tritonclient reads the status and the message
        grpc_client.get_model_config("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "unknown model" in raised.value.message()
    # every worker still serves: new connections (spread over the workers) answer
    for _ in range(6):
        with grpc.insecure_channel(server.grpc_url) as fresh:
            live = fresh.unary_unary(SERVICE + "ServerLive", request_serializer=service_pb2.ServerLiveRequest.SerializeToString,
                                     response_deserializer=service_pb2.ServerLiveResponse.FromString)
            assert live(service_pb2.ServerLiveRequest(), timeout=10).live
    assert grpc_client.infer(NAME, [_image_tensor(triton_grpc, [jpeg])]).as_numpy("probabilities").shape == (1, 1000)
    assert "Traceback" not in server.log_tail(200_000)
