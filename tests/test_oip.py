"""The Open Inference Protocol (KServe v2) routes of the real `imgcls serve`, called with tritonclient.

One server for the module (`--model-name`, small limits so every 413 is cheap, a warm-up delay so
the v2 readiness can be seen answering "not ready" first). Happy paths go through tritonclient's
HTTP client (binary and JSON tensors, classification extension); malformed requests through httpx,
since tritonclient refuses to build them.
"""
from __future__ import annotations

import base64
import gzip
import json
import re
import struct
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_tiny_bundle
from tests.robustness.corpus import png_with_fake_size
from imgcls.service.host.launcher import LOOPBACK, child_environment, free_port, http_status, start_server
from imgcls.service.predictor import Predictor

pytestmark = pytest.mark.slow  # a bundle export and a server start (~25 s on 2 cores)

MANIFEST = yaml.safe_load((REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
CONTAINER = MANIFEST["spec"]["predictor"]["containers"][0]
MANIFEST_ENV = {item["name"]: item["value"] for item in CONTAINER["env"]}
NAME = MANIFEST_ENV["IMGCLS_MODEL_NAME"]  # the server runs with the manifest's variables; docs/serving.md uses it too
LIMITS = {"IMGCLS_MAX_BODY_BYTES": str(300_000), "IMGCLS_MAX_IMAGES": "4", "IMGCLS_MAX_PIXELS": str(1_000_000),
          "IMGCLS_MAX_IMAGE_BYTES": str(200_000)}
IMAGES = [encode(make_image(80, 60, seed=s)) for s in range(3)] + [encode(make_image(50, 70, seed=9), "JPEG")]
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("oip-bundle"))


@pytest.fixture(scope="module")
def warmup_probes() -> dict:
    return {}


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory, warmup_probes):
    port, seen, stop = free_port(), [], threading.Event()

    def probe() -> None:  # the v2 health routes while the worker warms up (IMGCLS_WARMUP_DELAY_S)
        base = f"http://{LOOPBACK}:{port}"
        while not stop.is_set():
            seen.append((http_status(base + "/v2/health/live"), http_status(base + "/v2/health/ready"),
                         http_status(base + f"/v2/models/{NAME}/ready")))
            time.sleep(0.05)

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    # as the KServe manifest runs it (the bundle given as the argument instead of /mnt/models)
    manifest = {k: v for k, v in MANIFEST_ENV.items() if k.startswith("IMGCLS_") and k != "IMGCLS_BUNDLE"}
    env = {**manifest, **LIMITS, "IMGCLS_WARMUP_DELAY_S": "1.5"}
    try:
        handle = start_server(bundle, tmp_path_factory.mktemp("oip-log") / "serve.log", env=env, port=port)
    finally:
        stop.set()
        watcher.join()
    warmup_probes["seen"] = seen
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as session:
        yield session


@pytest.fixture(scope="module")
def predictor(bundle):
    with Predictor.load(bundle, threads=1) as loaded:
        yield loaded


def image_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    items = files if binary else [base64.b64encode(f) for f in files]  # JSON form: base64 strings
    tensor.set_data_from_numpy(np.array(items, dtype=object), binary_data=binary)
    return tensor


def classify_probabilities(http: httpx.Client, data: bytes, classes: int) -> np.ndarray:
    """The full probability vector /classify reports for one file (top_k = every class)."""
    response = http.post("/classify", files=[("images", ("x.png", data, "image/png"))], data={"top_k": str(classes)})
    assert response.status_code == 200, response.text
    row = np.zeros(classes, dtype=np.float32)
    for prediction in response.json()["results"][0]["predictions"]:
        row[prediction["index"]] = prediction["score"]
    return row


def post_json(http: httpx.Client, body: dict, path: str = INFER) -> httpx.Response:
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def image_tensor(files: list[bytes], **overrides) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(files)],
            "data": [base64.b64encode(f).decode() for f in files], **overrides}


def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body  # the protocol's error, not ours
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])
    return body["error"]


# ---------------------------------------------------------------- health and metadata
def test_health_is_live_before_ready_and_ready_once_warm(client, warmup_probes):
    seen = warmup_probes["seen"]
    assert (200, 400, 400) in seen, seen[:20]  # live while warming; not ready is a 4xx per the protocol
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert client.is_model_ready(NAME, model_version=client.get_model_metadata(NAME)["versions"][0])


def test_server_and_model_metadata(client, http, predictor):
    server = client.get_server_metadata()
    assert server["name"] == "imgcls" and set(server["extensions"]) == {"binary_tensor_data", "classification",
                                                                            "model_repository", "model_configuration"}
    metadata = client.get_model_metadata(NAME)
    size, classes = predictor.input_size, predictor.num_classes
    assert metadata["name"] == NAME and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, size, size]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}]
    (version,) = metadata["versions"]
    assert predictor.model_version.endswith("@" + version)
    assert client.get_model_metadata(NAME, model_version=version) == metadata
    assert http.get("/model").json()["name"] == NAME  # IMGCLS_MODEL_NAME names /model too
    assert not client.is_model_ready("other-model")


# ---------------------------------------------------------------- inference
def test_binary_bytes_image_matches_classify_exactly(client, http, predictor):
    result = client.infer(NAME, [image_input(IMAGES[:1])], request_id="req-1")
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == NAME
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 4 * predictor.num_classes
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, predictor.num_classes)
    np.testing.assert_array_equal(probabilities[0], classify_probabilities(http, IMAGES[0], predictor.num_classes))


def test_batch_json_and_binary_forms_agree(client, predictor):
    binary = client.infer(NAME, [image_input(IMAGES)]).as_numpy("probabilities")
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    as_json = client.infer(NAME, [image_input(IMAGES, binary=False)], outputs=outputs)
    assert "binary_data_size" not in json.dumps(as_json.get_response())  # JSON data both ways
    assert binary.shape == (len(IMAGES), predictor.num_classes)
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), binary, rtol=0, atol=1e-6)
    expected = predictor.infer(np.stack([predictor.decode(f) for f in IMAGES]))
    np.testing.assert_allclose(binary, expected, rtol=0, atol=1e-6)
    assert not np.allclose(binary[0], binary[1])  # different images, different answers


def test_uint8_pixels_binary_and_json(client, predictor):
    pixels = np.stack([predictor.decode(f) for f in IMAGES[:2]])  # preprocessed per the card, client side
    from_images = client.infer(NAME, [image_input(IMAGES[:2])]).as_numpy("probabilities")
    for binary in (True, False):
        tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        got = client.infer(NAME, [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(got, from_images, rtol=0, atol=1e-6)


def test_classification_extension(client, predictor):
    probabilities = client.infer(NAME, [image_input(IMAGES[:2])]).as_numpy("probabilities")
    for binary in (True, False):
        output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
        top = client.infer(NAME, [image_input(IMAGES[:2])], outputs=[output]).as_numpy("probabilities")
        assert top.shape == (2, 2)
        for row, entries in zip(probabilities, top):
            # binary BYTES come back as bytes, JSON ones as str (as from Triton)
            assert all(isinstance(entry, bytes if binary else str) for entry in entries)
            parsed = [(entry.decode() if binary else entry).split(":", 2) for entry in entries]
            indices = [int(index) for _, index, _ in parsed]
            assert indices == list(np.argsort(-row, kind="stable")[:2])
            assert [label for _, _, label in parsed] == [predictor.class_names[i] for i in indices]
            assert [float(score) for score, _, _ in parsed] == pytest.approx(row[indices], abs=1e-6)


def test_compressed_requests(client, http):
    plain = client.infer(NAME, [image_input(IMAGES[:2])]).as_numpy("probabilities")
    for algorithm in ("gzip", "deflate"):  # tritonclient's request compression
        packed = client.infer(NAME, [image_input(IMAGES[:2])], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(packed.as_numpy("probabilities"), plain)
    body = json.dumps({"inputs": [image_tensor(IMAGES[:1])]}).encode()
    bomb = gzip.compress(body[:-2] + b" " * 400_000 + body[-2:])  # ~1 KB inflating past the 300 kB body limit
    assert len(bomb) < 20_000
    assert_error(http.post(INFER, content=bomb, headers={"content-encoding": "gzip"}), 413, "inflated body")
    assert_error(http.post(INFER, content=gzip.compress(body)[:-30], headers={"content-encoding": "gzip"}), 400,
                 "truncated")
    assert_error(http.post(INFER, content=body, headers={"content-encoding": "gzip"}), 400, "cannot be inflated")
    assert_error(http.post(INFER, content=body, headers={"content-encoding": "br"}), 400, "not supported")


def test_versions_route_and_request_level_binary_output(http, client):
    version = client.get_model_metadata(NAME)["versions"][0]
    body = {"id": "v", "inputs": [image_tensor(IMAGES[:1])], "parameters": {"binary_data_output": True}}
    response = post_json(http, body, f"/v2/models/{NAME}/versions/{version}/infer")
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert header["id"] == "v" and header["outputs"][0]["parameters"]["binary_data_size"] == len(
        response.content) - header_length
    plain = post_json(http, {"inputs": [image_tensor(IMAGES[:1])]})
    assert "inference-header-content-length" not in plain.headers and "id" not in plain.json()
    values = np.frombuffer(response.content[header_length:], dtype="<f4")
    np.testing.assert_array_equal(values, np.asarray(plain.json()["outputs"][0]["data"], dtype=np.float32))


# ---------------------------------------------------------------- errors: {"error": "..."}, 4xx, never 5xx
def test_unknown_model_or_version_is_404(http, client):
    assert_error(post_json(http, {"inputs": [image_tensor(IMAGES[:1])]}, "/v2/models/nope/infer"), 404, "nope")
    assert_error(http.get("/v2/models/nope"), 404, "unknown model")
    assert_error(http.get(f"/v2/models/{NAME}/versions/999"), 404, "version")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nope", [image_input(IMAGES[:1])])
    assert raised.value.status() == "404" and "nope" in raised.value.message()



UNKNOWN_PATHS = ["/v2/", "/v2/nope", "/v2/health", "/v2/health/started", f"/v2/models/{NAME}/stats",
                 f"/v2/models/{NAME}/versions/1/infer/more", "/v2/repository/models/x/reload"]
WRONG_METHODS = [("POST", "/v2/health/live", "GET, HEAD"), ("DELETE", "/v2", "GET, HEAD"),
                 ("GET", INFER, "POST"), ("PUT", f"/v2/models/{NAME}", "GET, HEAD"),
                 ("GET", "/v2/models/nope/infer", "POST"), ("GET", "/v2/repository/index", "POST")]


def test_every_v2_path_answers_the_protocols_json_error(http):
    """Unknown /v2 paths are a JSON 404, a wrong method a JSON 405 naming the allowed ones (never plain text)."""
    for path in UNKNOWN_PATHS:
        for method in ("GET", "POST"):
            assert_error(http.request(method, path), 404, "no such path")
    for method, path, allowed in WRONG_METHODS:
        response = http.request(method, path)
        assert_error(response, 405, method)
        assert response.headers["allow"] == allowed
    assert http.head("/v2/health/live").status_code == 200  # GET routes take HEAD too


def test_tritonclient_reads_unknown_routes_as_404(client):
    """tritonclient parses {"error": ...}: its calls of extensions imgcls lacks fail with the reason, not a parse error."""
    with pytest.raises(InferenceServerException) as raised:
        client.get_inference_statistics(NAME)
    assert raised.value.status() == "404" and "no such path" in raised.value.message(), raised.value


def test_tritonclient_reads_the_model_repository(client):
    """The model repository extension: the index lists the served model; loading an unknown one is a typed 404."""
    index = client.get_model_repository_index()
    assert [(entry["name"], entry["state"]) for entry in index] == [(NAME, "READY")]
    assert "@" in index[0]["version"]  # <bundle folder>@<sha256 prefix>
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("no-such-model")
    assert raised.value.status() == "404" and "no-such-model" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.unload_model("no-such-model")
    assert raised.value.status() == "404" and "no-such-model" in raised.value.message()


BAD_REQUESTS = {
    "wrong datatype": ({"inputs": [image_tensor(IMAGES[:1], datatype="UINT8")]}, "datatype"),
    "image shape not [N]": ({"inputs": [image_tensor(IMAGES[:1], shape=[1, 1])]}, "shape"),
    "shape disagrees with data": ({"inputs": [image_tensor(IMAGES[:2], shape=[3])]}, "shape"),
    "pixels of the wrong size": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 8, 8],
                                              "data": [0] * 192}]}, "shape"),
    "pixels out of range": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                                         "data": [300] * 3072}]}, "0..255"),
    "pixels as floats": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                                      "data": [0.5] * 3072}]}, "integers"),
    "unknown input": ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["aa"]}]}, "unknown input"),
    "two inputs": ({"inputs": [image_tensor(IMAGES[:1]), image_tensor(IMAGES[:1])]}, "exactly one"),
    "no inputs": ({"id": "x"}, "exactly one"),
    "no data": ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}, "neither"),
    "zero images": ({"inputs": [image_tensor([])]}, "no images"),
    "bad base64": ({"inputs": [image_tensor(IMAGES[:1], data=["@@not base64@@"])]}, "image[0]: bad_base64"),
    "unknown output": ({"inputs": [image_tensor(IMAGES[:1])], "outputs": [{"name": "logits"}]}, "unknown output"),
    "bad classification": ({"inputs": [image_tensor(IMAGES[:1])],
                            "outputs": [{"name": "probabilities", "parameters": {"classification": "x"}}]},
                           "classification"),
    "shared memory": ({"inputs": [image_tensor(IMAGES[:1], parameters={"shared_memory_region": "r"})]},
                      "shared-memory"),
    "id not a string": ({"id": 5, "inputs": [image_tensor(IMAGES[:1])]}, '"id"'),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_tensor_is_400(http, name):
    body, needle = BAD_REQUESTS[name]
    assert_error(post_json(http, body), 400, needle)


def test_undecodable_image_names_its_index_and_reason(http, client):
    message = assert_error(post_json(http, {"inputs": [image_tensor([IMAGES[0], b"not an image at all"])]}),
                           400, "image[1]: not_an_image")
    assert "image[0]" not in message
    with pytest.raises(InferenceServerException) as raised:
        client.infer(NAME, [image_input([IMAGES[0], IMAGES[1][:100]])])
    assert raised.value.status() == "400" and "image[1]: truncated" in raised.value.message()


def test_malformed_bodies_are_400(http):
    assert_error(http.post(INFER, content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON")
    assert_error(http.post(INFER, content=b"[1, 2]"), 400, "JSON object")
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 50}}]}).encode()
    element = struct.pack("<I", len(IMAGES[0])) + IMAGES[0]
    cases = [
        ({"Inference-Header-Content-Length": "nope"}, header + element, "Inference-Header-Content-Length"),
        ({"Inference-Header-Content-Length": str(len(header) + 10**6)}, header + element, "body length"),
        ({"Inference-Header-Content-Length": str(len(header))}, header + element, "binary_data_size"),
        ({}, header + element, "JSON"),
    ]
    for headers, content, needle in cases:
        assert_error(http.post(INFER, content=content, headers=headers), 400, needle)
    short = header.replace(b"50", str(len(element) - 1).encode())
    assert_error(http.post(INFER, content=short + element[:-1], headers={"Inference-Header-Content-Length":
                                                                          str(len(short))}), 400, "element 0 claims")
    extra = header.replace(b"50", str(len(element) + 3).encode())
    assert_error(http.post(INFER, content=extra + element + b"xyz", headers={"Inference-Header-Content-Length":
                                                                              str(len(extra))}), 400, "follow")


def test_over_a_limit_is_413(http, client):
    assert_error(post_json(http, {"inputs": [image_tensor(IMAGES[:1] * 5)]}), 413, "limit of 4")
    assert_error(http.post(INFER, content=bytes(300_001)), 413, "exceeds the limit")
    huge = b"\xff\xd8\xff" + bytes(200_000)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(NAME, [image_input([huge])])
    assert raised.value.status() == "413" and "image[0]: too_large" in raised.value.message()
    bomb = png_with_fake_size(1100, 1000)  # a header claiming 1.1 Mpx > IMGCLS_MAX_PIXELS: refused before decoding
    assert_error(post_json(http, {"inputs": [image_tensor([bomb])]}), 413, "image[0]: too_many_pixels")


# ---------------------------------------------------------------- model name option, KServe manifest
def test_model_name_option(bundle, monkeypatch):
    from imgcls.service.host import serve

    monkeypatch.delenv("IMGCLS_MODEL_NAME", raising=False)
    args = serve.build_parser().parse_args([str(bundle), "--model-name", "flowers-v2"])
    assert serve.config_from(args, {}).model_name == "flowers-v2"
    from_env = serve.config_from(serve.build_parser().parse_args([str(bundle)]), {"IMGCLS_MODEL_NAME": "x"})
    assert from_env.model_name == "x"
    assert serve.main([str(bundle), "--model-name", "../etc"]) == 2  # a name must be one URL path segment


def test_kserve_manifest_matches_the_container_and_the_routes(http):
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    port = CONTAINER["ports"][0]["containerPort"]
    assert MANIFEST["kind"] == "InferenceService" and MANIFEST["apiVersion"] == "serving.kserve.io/v1beta1"
    assert CONTAINER["name"] == "kserve-container" and MANIFEST_ENV["PROTOCOL"] == "v2"
    assert f"EXPOSE {port}" in dockerfile and f'"--port", "{port}"' in dockerfile
    assert MANIFEST_ENV["IMGCLS_BUNDLE"] == "/mnt/models" and MANIFEST_ENV["STORAGE_URI"]  # storage initializer's path
    for probe, expected in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = CONTAINER[probe]["httpGet"]
        assert get["path"] == expected and get["port"] == port
        assert http.get(get["path"]).status_code == 200  # the running server answers the probe
    assert {"cpu", "memory"} <= set(CONTAINER["resources"]["requests"]) and CONTAINER["resources"]["limits"]


# ---------------------------------------------------------------- documentation, metrics, README
def test_openapi_documents_the_v2_routes(http):
    paths = http.get("/docs.json").json()["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"200", "400", "404", "413"} <= set(infer["responses"])
    assert "application/octet-stream" in infer["requestBody"]["content"]
    for path in ("/v2/models/{name}", "/v2/models/{name}/config", "/v2/models/{name}/versions/{version}/config"):
        assert {"200", "400", "404"} <= set(paths[path]["get"]["responses"]), path  # 400: a name with path characters
    assert_error(http.get("/v2/models/a%20b/config"), 400, "model name")


def test_docs_tritonclient_example_runs_as_written(server, tmp_path):
    guide = (REPO_ROOT / "docs" / "serving.md").read_text()
    section = guide[guide.index("## Open Inference Protocol"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "localhost:3000" in code and f'"{NAME}"' in code
    (tmp_path / "cat.jpg").write_bytes(IMAGES[3])
    run = subprocess.run([sys.executable, "-c", code.replace("localhost:3000", server.url.removeprefix("http://"))],
                         cwd=tmp_path, env=child_environment(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"\S+: 0\.\d{3}", line) for line in lines), run.stdout


def oip_counts(http: httpx.Client) -> dict[str, float]:
    found = re.findall(r'^(imgcls_(?:oip_requests|http_requests|images)_total\{.*\}) (\S+)$',
                       http.get("/metrics").text, re.M)
    return {series: float(value) for series, value in found}


def test_metrics_count_v2_requests_by_route_and_outcome(http, client):
    """Counted per route template and outcome; a short window, as deltas (other servers may share the host)."""
    before = oip_counts(http)
    client.infer(NAME, [image_input(IMAGES[:2])])
    post_json(http, {"inputs": [image_tensor(IMAGES[:1])]}, "/v2/models/nope-123/infer")
    post_json(http, BAD_REQUESTS["wrong datatype"][0])
    post_json(http, {"inputs": [image_tensor([IMAGES[0], b"not an image"])]})
    http.get("/v2/health/ready")
    http.get("/v2/nope-456")
    http.post("/v2/health/live")
    after = oip_counts(http)

    def delta(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    infer = 'route="/v2/models/{name}/infer"'
    model = f'model="{NAME}"'
    assert delta(f'imgcls_oip_requests_total{{{model},outcome="ok",reason="none",{infer}}}') == 1
    assert delta(f'imgcls_oip_requests_total{{model="",outcome="rejected",reason="unknown_model",{infer}}}') == 1
    assert delta(f'imgcls_oip_requests_total{{{model},outcome="rejected",reason="bad_datatype",{infer}}}') == 1
    assert delta(f'imgcls_oip_requests_total{{{model},outcome="rejected",reason="not_an_image",{infer}}}') == 1
    assert delta('imgcls_oip_requests_total{model="",outcome="ok",reason="none",route="/v2/health/ready"}') == 1
    assert delta(f'imgcls_http_requests_total{{method="POST",{infer},status="400"}}') == 2
    assert delta(f'imgcls_http_requests_total{{method="POST",{infer},status="404"}}') == 1
    assert delta(f'imgcls_images_total{{{model},outcome="classified",reason="none"}}') == 2  # the ok request's 2
    assert delta(f'imgcls_images_total{{{model},outcome="failed",reason="not_an_image"}}') == 1
    assert delta('imgcls_oip_requests_total{model="",outcome="rejected",reason="unknown_path",route="unmatched"}') == 1
    assert delta('imgcls_http_requests_total{method="GET",route="unmatched",status="404"}') == 1
    assert delta('imgcls_oip_requests_total{model="",outcome="rejected",reason="method_not_allowed",'
                 'route="/v2/health/live"}') == 1
    assert delta('imgcls_http_requests_total{method="POST",route="/v2/health/live",status="405"}') == 1
    assert not any("nope-123" in series or "nope-456" in series for series in after)  # raw paths never become labels


# ---------------------------------------------------------------- model configuration and single-input views
def test_model_configuration_extension(client, http, predictor):
    """Triton's model configuration: one input with format and dims per view, max_batch_size, batching in force."""
    size, classes = predictor.input_size, predictor.num_classes
    config = client.get_model_config(NAME + ".pixels")
    assert config["name"] == NAME + ".pixels" and config["max_batch_size"] == 4  # IMGCLS_MAX_IMAGES
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_UINT8", "format": "FORMAT_NCHW",
                                "dims": [3, size, size]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes]}]
    served = http.get("/model").json()["batching"]
    assert config["dynamic_batching"] == {"preferred_batch_size": served["sizes"],
                                          "max_queue_delay_microseconds": round(served["wait_ms"] * 1000)}
    image = client.get_model_config(NAME + ".image")["input"]
    assert image == [{"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1],
                      "reshape": {"shape": []}}]
    assert [i["name"] for i in client.get_model_config(NAME)["input"]] == ["image", "pixels"]
    version = client.get_model_metadata(NAME)["versions"][0]
    assert client.get_model_config(NAME + ".pixels", model_version=version) == config
    assert_error(http.get(f"/v2/models/{NAME}.pixels/versions/0/config"), 404, "no version")
    assert_error(http.get("/v2/models/nope/config"), 404, "unknown model")
    assert_error(http.get(f"/v2/models/{NAME}.other/config"), 404, "unknown model")


def test_single_input_views_answer_as_the_model(client, predictor):
    """NAME.image takes only encoded files, NAME.pixels only pixels (UINT8, or FP32 0..255): the model's answers."""
    size = predictor.input_size
    pixels_meta = client.get_model_metadata(NAME + ".pixels")
    assert pixels_meta["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, size, size]}]
    assert client.get_model_metadata(NAME + ".image")["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert client.is_model_ready(NAME + ".pixels") and client.is_model_ready(NAME + ".image")
    expected = client.infer(NAME, [image_input(IMAGES[:2])]).as_numpy("probabilities")
    through_view = client.infer(NAME + ".image", [image_input(IMAGES[:2])])
    assert through_view.get_response()["model_name"] == NAME + ".image"
    np.testing.assert_array_equal(through_view.as_numpy("probabilities"), expected)
    pixels = np.stack([predictor.decode(f) for f in IMAGES[:2]])
    for datatype in ("UINT8", "FP32"):
        tensor = triton.InferInput("pixels", list(pixels.shape), datatype)
        tensor.set_data_from_numpy(pixels.astype(np.float32 if datatype == "FP32" else np.uint8))
        got = client.infer(NAME + ".pixels", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    output = triton.InferRequestedOutput("probabilities", class_count=2)
    top = client.infer(NAME + ".pixels", [tensor], outputs=[output]).as_numpy("probabilities")
    assert [int(entry.decode().split(":")[1]) for entry in top[0]] == list(np.argsort(-expected[0], kind="stable")[:2])
    with pytest.raises(InferenceServerException, match="unknown input 'image'") as raised:
        client.infer(NAME + ".pixels", [image_input(IMAGES[:1])])
    assert raised.value.status() == "400"
    scaled = triton.InferInput("pixels", list(pixels.shape), "FP32")
    scaled.set_data_from_numpy(pixels.astype(np.float32) / 255.0 - 1.0)  # normalised by mistake: refused
    with pytest.raises(InferenceServerException, match="0..255"):
        client.infer(NAME + ".pixels", [scaled])
