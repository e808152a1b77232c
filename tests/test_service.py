"""The real HTTP service: `imgcls serve` (bentoml serve, 2 workers) on a loopback port, spoken to over HTTP.

One server for the whole module (small request limits so every 413 is cheap to provoke, and a
warm-up delay so /readyz can be seen answering 503 before the model is warm).
"""
from __future__ import annotations

import base64
import concurrent.futures
import re
import signal
import time

import httpx
import numpy as np
import pytest

from tests.conftest import encode, make_image, metric_values as parse_metrics
from tests.factories import make_tiny_bundle
from imgcls.service.predictor import Predictor
from imgcls.service.host.launcher import start_server

LIMITS = {"IMGCLS_MAX_BODY_BYTES": str(300_000), "IMGCLS_MAX_IMAGES": "4", "IMGCLS_MAX_PIXELS": str(1_000_000),
          "IMGCLS_MAX_IMAGE_BYTES": str(200_000)}
WARMUP_DELAY_S = 1.5


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("service-bundle"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    env = {**LIMITS, "IMGCLS_WARMUP_DELAY_S": str(WARMUP_DELAY_S), "IMGCLS_WORKERS": "2"}
    handle = start_server(bundle, tmp_path_factory.mktemp("service-log") / "serve.log", env=env)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def predictor(bundle):
    with Predictor.load(bundle, threads=1) as loaded:
        yield loaded


IMAGES = [encode(make_image(80, 60, seed=s)) for s in range(3)] + [encode(make_image(50, 70, seed=9), "JPEG")]


def expected(predictor, data: bytes, k: int) -> list[tuple[str, float]]:
    probabilities = predictor.infer(predictor.decode(data)[None])[0]
    return [(p.label, p.score) for p in predictor.top_k(probabilities, k)]


def got(result: dict) -> list[tuple[str, float]]:
    return [(p["label"], p["score"]) for p in result["predictions"]]


def assert_same(actual, wanted):
    assert [label for label, _ in actual] == [label for label, _ in wanted]
    np.testing.assert_allclose([s for _, s in actual], [s for _, s in wanted], rtol=1e-4, atol=1e-6)


def files(*items: tuple[str, bytes]) -> list:
    return [("images", (name, data, "application/octet-stream")) for name, data in items]


# ---------------------------------------------------------------- readiness
def test_readyz_is_503_until_warm_while_livez_answers(server):
    seen = [(t, live, ready) for t, live, ready in server.probes if live == 200]
    assert seen, server.probes
    assert any(ready == 503 for _, _, ready in seen), "never saw /readyz 503 while live"
    assert seen[-1][2] == 200


# ---------------------------------------------------------------- classifying
def test_multipart_single_image_matches_the_in_process_predictor(client, predictor):
    response = client.post("/classify", files=files(("cat.png", IMAGES[0])))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["top_k"] == 3  # default 5 clamped to the 3 classes
    (result,) = body["results"]
    assert result["filename"] == "cat.png" and result["position"] == 0
    assert_same(got(result), expected(predictor, IMAGES[0], 3))
    assert response.headers["x-model-version"] == body["model"]["version"] == predictor.model_version
    assert {"decode_ms", "queue_ms", "inference_ms", "total_ms"} <= set(body["timing"])


def test_multipart_several_images_one_bad_fails_alone(client, predictor):
    response = client.post("/classify", files=files(("a.png", IMAGES[0]), ("junk.bin", b"not an image at all"),
                                                    ("c.jpg", IMAGES[3])), data={"top_k": "2"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["position"] for r in results] == [0, 1, 2]
    assert results[1]["error"] == {"status": 400, "reason": "not_an_image", "message": results[1]["error"]["message"]}
    assert "predictions" not in results[1]
    assert_same(got(results[0]), expected(predictor, IMAGES[0], 2))
    assert_same(got(results[2]), expected(predictor, IMAGES[3], 2))


def test_json_base64_same_answers_as_multipart(client, predictor):
    payload = {"images": [base64.b64encode(IMAGES[1]).decode(),
                          {"data": "data:image/png;base64," + base64.b64encode(IMAGES[2]).decode(), "name": "x.png"},
                          base64.urlsafe_b64encode(IMAGES[3]).decode().rstrip("=")], "top_k": 1}
    response = client.post("/classify", json=payload)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[1]["filename"] == "x.png"
    for result, data in zip(results, IMAGES[1:]):
        assert_same(got(result), expected(predictor, data, 1))


def test_raw_image_body_and_query_top_k(client, predictor):
    response = client.post("/classify?top_k=2", content=IMAGES[0], headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert_same(got(response.json()["results"][0]), expected(predictor, IMAGES[0], 2))


@pytest.mark.parametrize("top_k, count", [(1, 1), (2, 2), (100, 3)])
def test_top_k_is_honoured_and_clamped(client, top_k, count):
    response = client.post("/classify", files=files(("a.png", IMAGES[0])), data={"top_k": str(top_k)})
    assert response.status_code == 200
    predictions = response.json()["results"][0]["predictions"]
    assert len(predictions) == count == response.json()["top_k"]
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


def test_bentoml_sync_http_client(server, tmp_path, predictor):
    import bentoml

    path = tmp_path / "cat.png"
    path.write_bytes(IMAGES[0])
    with bentoml.SyncHTTPClient(server.url, timeout=30) as remote:
        answer = remote.classify(images=[path, path], top_k=2)
    answer = answer if isinstance(answer, dict) else answer.model_dump()
    assert len(answer["results"]) == 2
    assert_same(got(answer["results"][1]), expected(predictor, IMAGES[0], 2))


# ---------------------------------------------------------------- errors: JSON, reason code, never 500
def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


big_pixels = encode(make_image(1100, 1000).convert("L").point(lambda _: 7), "PNG")  # 1.1 Mpx, few bytes
ERROR_CASES = {
    "not an image": (dict(files=files(("x.txt", b"hello world"))), 400, "not_an_image"),
    "truncated": (dict(files=files(("x.jpg", truncated(encode(make_image(200, 150), "JPEG"))))), 400, "truncated"),
    "empty file": (dict(files=files(("x.png", b"")),), 400, "empty"),
    "bad base64": (dict(json={"images": ["%%%not base64%%%"]}), 400, "bad_base64"),
    "bad json": (dict(content=b"{images: [", headers={"content-type": "application/json"}), 400, "bad_json"),
    "images not a list": (dict(json={"images": "abc"}), 400, "bad_json"),
    "unknown json field": (dict(json={"images": [], "topk": 3}), 400, "bad_field"),
    "no images": (dict(json={"images": []}), 400, "no_images"),
    "top_k zero": (dict(files=files(("a.png", IMAGES[0])), data={"top_k": "0"}), 400, "bad_top_k"),
    "top_k text": (dict(json={"images": [base64.b64encode(IMAGES[0]).decode()], "top_k": "many"}), 400, "bad_top_k"),
    "top_k bool": (dict(json={"images": [base64.b64encode(IMAGES[0]).decode()], "top_k": True}), 400, "bad_top_k"),
    "body too large": (dict(content=b"\xff" * 400_000, headers={"content-type": "image/jpeg"}), 413, "body_too_large"),
    "too many images": (dict(files=files(*[("a.png", IMAGES[0])] * 5)), 413, "too_many_images"),
    "too many json images": (dict(json={"images": ["AAAA"] * 5}), 413, "too_many_images"),
    "too many pixels": (dict(files=files(("big.png", big_pixels))), 413, "too_many_pixels"),
    "image too large": (dict(files=files(("a.jpg", b"\xff\xd8" + b"\0" * 250_000))), 413, "too_large"),
    "text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_content_type"),
    "no content type": (dict(content=b"hello"), 415, "unsupported_content_type"),
    "pdf": (dict(files=files(("a.pdf", b"%PDF-1.4\n1 0 obj\n"))), 415, "unsupported_format"),
    "multipart without boundary": (dict(content=b"--zz\r\n", headers={"content-type": "multipart/form-data"}),
                                   400, "bad_multipart"),
    "multipart cut short": (dict(content=b"--zz\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a\"\r\n\r\nabc",
                                 headers={"content-type": "multipart/form-data; boundary=zz"}), 400, "no_images"),
    "mixed failures": (dict(files=files(("x.txt", b"hello"), ("big.png", big_pixels))), 400, "all_images_failed"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_json_with_reason_codes(client, case):
    request, status, reason = ERROR_CASES[case]
    response = client.post("/classify", **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["reason"] == reason and error["message"]


def test_fuzzed_bodies_never_give_500(client):
    rng = np.random.default_rng(0)
    bodies = [(rng.bytes(int(n)), ct) for n in (0, 1, 17, 4096) for ct in
              ("image/png", "application/json", "multipart/form-data; boundary=x", "multipart/form-data")]
    bodies += [(b'{"images": [1, null, {"data": 5}, {"data": "AA", "x": 1}]}', "application/json"),
               (b"[1,2]", "application/json"), (b'{"images": ["' + b"A" * 1000 + b'"]}', "application/json")]
    for body, content_type in bodies:
        response = client.post("/classify", content=body, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, (content_type, body[:40], response.status_code, response.text)
        assert response.json()["error"]["reason"]


# ---------------------------------------------------------------- load: batching without 503s
def test_concurrent_load_is_batched_without_rejections(client, server):
    def one(i: int) -> int:
        return client.post("/classify", files=files(("a.png", IMAGES[i % 4]))).status_code

    before = metric_sum(client, "imgcls_batch_images_count")
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(192), timeout=120))
    assert statuses.count(200) == 192, {s: statuses.count(s) for s in set(statuses)}
    batches = metric_sum(client, "imgcls_batch_images_count") - before
    assert 0 < batches <= 192
    # every worker put imgcls's request timeout in place of BentoML's (which held each answered request)
    assert "request timeout is not replaced" not in server.log_tail(200_000)


# ---------------------------------------------------------------- model card, docs, metrics
def test_model_summary(client, predictor):
    response = client.get("/model")
    assert response.status_code == 200
    summary = response.json()
    assert summary["class_names"] == list(predictor.class_names)
    assert summary["version"] == predictor.model_version == response.headers["x-model-version"]
    assert summary["provider"] == "CPUExecutionProvider" and summary["precision"] == "fp32"
    assert summary["batching"]["sizes"][0] == 1 and summary["limits"]["max_images"] == 4


def test_openapi_documents_every_request_form_and_error(client):
    spec = client.get("/docs.json").json()
    post = spec["paths"]["/classify"]["post"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(post["requestBody"]["content"])
    assert {"200", "400", "413", "415", "503"} <= {str(code) for code in post["responses"]}
    assert "/model" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert {"ClassifyResponse", "ErrorResponse", "ClassifyJSONRequest", "ModelSummary"} <= set(schemas)


def metric_values(client) -> dict[str, float]:
    return parse_metrics(client.get("/metrics").text)


def metric_sum(client, prefix: str) -> float:
    return sum(v for k, v in metric_values(client).items() if k.startswith(prefix))


def test_metrics_count_every_request_across_workers(client, bundle):
    model = f'model="{bundle.name}"'
    before = metric_values(client)
    for i in range(6):  # 2 workers: the requests are spread, the counts must still add up
        assert client.post("/classify", files=files(("a.png", IMAGES[0]), ("b.png", IMAGES[1]))).status_code == 200
    client.post("/classify", files=files(("x.txt", b"nope")))
    after = metric_values(client)

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta(f'imgcls_requests_total{{{model},outcome="ok",reason="none"}}') == 6
    assert delta(f'imgcls_requests_total{{{model},outcome="rejected",reason="not_an_image"}}') == 1
    assert delta(f'imgcls_images_total{{{model},outcome="classified",reason="none"}}') == 12
    assert sum(delta(k) for k in after if k.startswith("imgcls_predictions_total")) == 12
    assert delta("imgcls_top1_confidence_count") == 12
    assert delta("imgcls_decode_seconds_count") == 12 and delta("imgcls_inference_seconds_count") >= 1
    info = [k for k in after if k.startswith("imgcls_model_info") and after[k] == 1]
    assert len(info) == 1 and 'provider="CPUExecutionProvider"' in info[0] and 'precision="fp32"' in info[0]
    assert re.search(r'imgcls_http_requests_total\{method="POST",route="/classify",status="200"\}', " ".join(after))


def test_unknown_paths_do_not_add_series(client):
    client.get("/nothing-here-0")
    before = metric_values(client)
    for i in range(1, 25):
        assert client.get(f"/nothing-here-{i}").status_code == 404
    after = metric_values(client)
    assert set(after) - set(before) == set()
    assert not any("nothing-here" in name for name in after)
    unmatched = 'imgcls_http_requests_total{method="GET",route="unmatched",status="404"}'
    assert after[unmatched] - before[unmatched] == 24



def test_wrong_methods_are_counted(client):
    """The 405 of a wrong method on /classify is an answer like any other: counted under its route."""
    series = 'imgcls_http_requests_total{method="%s",route="/classify",status="405"}'
    before = metric_values(client)
    for method in ("GET", "GET", "PUT"):
        assert client.request(method, "/classify").status_code == 405
    after = metric_values(client)
    assert after.get(series % "GET", 0.0) - before.get(series % "GET", 0.0) == 2
    assert after.get(series % "PUT", 0.0) - before.get(series % "PUT", 0.0) == 1

# ---------------------------------------------------------------- last: graceful stop
def test_sigterm_stops_gracefully(server, client):
    assert client.get("/readyz").status_code == 200
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    assert code == 0, server.log_tail()
    assert time.monotonic() - started < 30
    assert "server stopped" in server.log_tail()
