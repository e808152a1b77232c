"""The bad-input corpus (tests/robustness/corpus.py) through ``POST /v2/models/{name}/infer``, then
malformed Open Inference Protocol requests: never a 5xx, always the documented status.

Every image of the corpus goes in as one BYTES element, in binary form (the raw file after the JSON
header) and in JSON form (base64): a file ``/classify`` classifies comes back with probabilities,
a file it refuses comes back with the same status and the message names ``image[0]`` and the same
reason code. After each case the server is still ready and still classifies.
"""
from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest

from tests.factories import make_tiny_bundle
from tests.robustness.corpus import Limits, build_corpus, encode, photo_like
from tests.robustness.harness import answers, start_server

pytestmark = pytest.mark.slow  # a bundle export, a server start and ~150 requests

LIMITS = Limits(max_body_bytes=8 << 20, max_images=32, max_image_bytes=2 << 20, max_pixels=40_000_000)
FILES = [case for case in build_corpus(LIMITS) if case.payload is not None]
GOOD = encode(photo_like(64, 48, seed=1), "PNG")
PROBE = {"files": [("images", ("probe.png", GOOD, "image/png"))]}
NAME = "robust"
INFER = f"/v2/models/{NAME}/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("robust-oip-bundle"))
    server = start_server(bundle, tmp_path_factory.mktemp("robust-oip-log") / "serve.log",
                          env=LIMITS.env(), args=["--model-name", NAME])
    try:
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            assert answers(http, PROBE)
            yield http
    finally:
        server.stop()


def binary_request(files: list[bytes]) -> dict:
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return {"content": header + raw, "headers": {HEADER: str(len(header))}}


def json_request(files: list[bytes]) -> dict:
    data = [base64.b64encode(f).decode() for f in files]
    return {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": data}]}}


def still_serving(client: httpx.Client) -> bool:
    response = client.post(INFER, **binary_request([GOOD]))
    return answers(client, PROBE) and response.status_code == 200


def check(response: httpx.Response, status: int, needle: str | None = None) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    if status == 200:
        (output,) = body["outputs"]
        assert output["name"] == "probabilities" and output["shape"][0] == 1
        assert abs(sum(output["data"]) - 1.0) < 1e-4
        return
    assert list(body) == ["error"], body
    if needle is not None:
        assert needle in body["error"], body


@pytest.mark.parametrize("form", ["binary", "json"])
@pytest.mark.parametrize("case", FILES, ids=[case.name for case in FILES])
def test_corpus_file(case, form, client):
    build = binary_request if form == "binary" else json_request
    response = client.post(INFER, **build([case.payload]))
    check(response, case.status, None if case.status == 200 else f"image[0]: {case.reason}:")
    assert still_serving(client), case.name


def _header(tensor: dict, **extra) -> dict:
    return {"json": {"inputs": [tensor], **extra}}


IMAGE = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(GOOD).decode()]}
MALFORMED = {
    "empty body": ({"content": b""}, 400),
    "random bytes": ({"content": np.random.default_rng(3).bytes(2048)}, 400),
    "deeply nested json": ({"content": b"[" * 100_000 + b"]" * 100_000}, 400),
    "json null": ({"content": b"null"}, 400),
    "inputs is an object": ({"json": {"inputs": IMAGE}}, 400),
    "negative header length": ({"content": b"{}", "headers": {HEADER: "-1"}}, 400),
    "header length past the body": ({"content": b"{}", "headers": {HEADER: "99"}}, 400),
    "binary part without a declaration": ({"content": b'{"inputs": []}xyz', "headers": {HEADER: "14"}}, 400),
    "negative shape": (_header({**IMAGE, "shape": [-1]}), 400),
    "float shape": (_header({**IMAGE, "shape": [1.0]}), 400),
    "shape of strings": (_header({**IMAGE, "shape": ["1"]}), 400),
    "huge batch": (_header({**IMAGE, "shape": [10**12]}), 413),
    "33 images (over the limit)": (json_request([GOOD] * 33), 413),
    "32 images (the limit)": (json_request([GOOD] * 32), 200),
    "data is an object": (_header({**IMAGE, "data": {"a": 1}}), 400),
    "data of numbers": (_header({**IMAGE, "data": [1]}), 400),
    "pixels nested wrongly": (_header({"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                                       "data": [[1, 2], [3]]}), 400),
    "pixels as strings": (_header({"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                                   "data": ["a"] * 3072}), 400),
    "pixels with huge integers": (_header({"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                                           "data": [10**30] * 3072}), 400),
    "binary pixels too short": ({"content": b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, '
                                            b'32], "parameters": {"binary_data_size": 5}}]}abcde'}, 400),
    "binary_data_size not an integer": (_header({"name": "image", "datatype": "BYTES", "shape": [1],
                                                 "parameters": {"binary_data_size": "5"}}), 400),
    "parameters not an object": (_header(IMAGE, parameters=[1]), 400),
    "outputs empty": (_header(IMAGE, outputs=[]), 400),
    "negative classification": (_header(IMAGE, outputs=[{"name": "probabilities",
                                                         "parameters": {"classification": -2}}]), 400),
    "binary_data not a bool": (_header(IMAGE, outputs=[{"name": "probabilities",
                                                       "parameters": {"binary_data": "yes"}}]), 400),
    "oversize body": ({"content": bytes(LIMITS.max_body_bytes + 1)}, 413),
    "oversize image": (binary_request([b"\xff\xd8\xff" + bytes(LIMITS.max_image_bytes)]), 413),
    "one bad image among good ones": (binary_request([GOOD, b"text", GOOD]), 400),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request(name, client):
    request, status = MALFORMED[name]
    if name == "binary pixels too short":  # the header is everything before the 5 binary bytes
        request = {**request, "headers": {HEADER: str(request["content"].index(b"abcde"))}}
    response = client.post(INFER, **request)
    if status == 200:
        assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [32, 3], response.text[:300]
    else:
        check(response, status)
    assert still_serving(client), name


def test_wrong_method_and_unknown_paths_are_4xx(client):
    assert client.get(INFER).status_code == 405
    assert client.post("/v2/models/robust/versions/1/2/infer", json={}).status_code == 404
    assert client.post("/v2/models//infer", json={}).status_code == 404
