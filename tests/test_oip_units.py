"""The Open Inference Protocol codec (imgcls.service.protocols.oip.messages) against tritonclient's own (de)serialisers.

No server: tritonclient builds the request bytes exactly as it would send them, our parser reads
them; our binary outputs are read back by tritonclient's ``InferResult``.
"""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import deserialize_bytes_tensor

from imgcls.service.protocols.oip.messages import HEADER_LENGTH, InferRequest, ModelSpec, OIPError, RequestedOutput, parse_infer
from imgcls.service.protocols.oip.response import encode_infer, serialize_bytes

MODEL = ModelSpec(name="m", version="abc", crop_size=4, class_names=("cat", "dog", "emu"), max_images=8)


def triton_body(inputs, outputs=None, request_id="") -> tuple[bytes, str | None]:
    body, json_size = _get_inference_request(inputs, request_id, outputs, 0, False, False, 0, None, None)
    return body, None if json_size is None else str(json_size)


def test_binary_bytes_elements_as_tritonclient_writes_them():
    files = [b"\xff\xd8first", b"", b"\x89PNG" + bytes(300)]
    tensor = triton.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    parsed = parse_infer(*triton_body([tensor], request_id="r7"), MODEL)
    assert parsed.images == tuple(files) and parsed.id == "r7" and parsed.pixels is None
    assert parsed.outputs == (RequestedOutput("probabilities", True, 0),)  # no outputs: binary_data_output


def test_uint8_pixels_binary_and_json_as_tritonclient_writes_them():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
    for binary in (True, False):
        tensor = triton.InferInput("pixels", [2, 3, 4, 4], "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        output = triton.InferRequestedOutput("probabilities", binary_data=False, class_count=2)
        parsed = parse_infer(*triton_body([tensor], [output]), MODEL)
        np.testing.assert_array_equal(parsed.pixels, pixels)
        assert parsed.outputs == (RequestedOutput("probabilities", False, 2),)


def test_encoded_outputs_read_back_by_tritonclient():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    request = InferRequest("q", (b"a", b"b"), None, (RequestedOutput("probabilities", True, 0),))
    body, headers = encode_infer(request, MODEL, probabilities)
    result = triton.InferResult.from_response_body(body, header_length=int(headers[HEADER_LENGTH]))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert result.get_response()["id"] == "q" and result.get_response()["model_version"] == "abc"
    ranked = InferRequest(None, (b"a", b"b"), None, (RequestedOutput("probabilities", True, 5),))
    body, headers = encode_infer(ranked, MODEL, probabilities)
    top = triton.InferResult.from_response_body(body, header_length=int(headers[HEADER_LENGTH]))
    assert top.as_numpy("probabilities").tolist() == [[b"0.700000:0:cat", b"0.200000:1:dog", b"0.100000:2:emu"],
                                                       [b"0.600000:2:emu", b"0.300000:1:dog", b"0.100000:0:cat"]]
    as_json, headers = encode_infer(InferRequest(None, (b"a",), None, (RequestedOutput("probabilities", False, 0),)),
                                    MODEL, probabilities[:1])
    assert HEADER_LENGTH not in headers and b'"data":[0.699999988079071,' in as_json


def test_serialized_bytes_match_tritonclient():
    items = ["0.5:1:dog", "", "0.25:2:caf\u00e9"]
    decoded = deserialize_bytes_tensor(serialize_bytes(items))
    assert [d.decode("utf-8") for d in decoded] == items


@pytest.mark.parametrize("header_length", ["abc", "-3", "100000"])
def test_bad_header_length_is_a_400(header_length):
    with pytest.raises(OIPError) as raised:
        parse_infer(b'{"inputs": []}', header_length, MODEL)
    assert raised.value.status == 400 and raised.value.reason == "bad_header_length"
