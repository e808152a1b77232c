"""The bad-input corpus (tests/robustness/corpus.py) against the real server, started once.

For every case: the documented status and reason code (imgcls.service.protocols.classify.schemas.REASON_STATUS), never a 5xx,
the server still ready and classifying afterwards, and no jump in the resident memory (VmRSS) or
its high-water mark (VmHWM) of the server's processes, so the decompression bomb is refused
before any pixel is allocated. Then: nothing in a request is ever used as a path on disk.
"""
from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from tests.robustness.corpus import Case, Limits, build_corpus, encode, photo_like
from tests.factories import make_tiny_bundle
from tests.robustness.harness import answers, record, start_server, tree_memory_mib
from imgcls.service.protocols.classify.schemas import REASON_STATUS

LIMITS = Limits(max_body_bytes=8 << 20, max_images=32, max_image_bytes=2 << 20, max_pixels=40_000_000)
CORPUS = build_corpus(LIMITS)
GOOD = encode(photo_like(64, 48, seed=1), "PNG")
PROBE = {"files": [("images", ("probe.png", GOOD, "image/png"))]}
MEMORY_JUMP_MIB = 32  # a 30000x30000 RGB decode: ~2.5 GiB; the 1x10000 strip resized whole (36 px model): ~40 MiB
OUTCOMES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("robust-bundle"))
    handle = start_server(bundle, tmp_path_factory.mktemp("robust-log") / "serve.log", env=LIMITS.env())
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        assert answers(http, PROBE)
        yield http


def test_corpus_has_every_kind_of_case():
    names = " | ".join(case.name for case in CORPUS)
    assert len(CORPUS) >= 30
    for needle in ("zero bytes", "random bytes", "plain text", "html", "svg", "pdf", "truncated jpeg",
                   "truncated png", "jpeg with", "progressive", "cmyk", "16-bit", "palette png with transparency",
                   "rgba", "grayscale", "1x1 ", "1x10000", "bomb", "animated gif", "multi-frame tiff", "webp",
                   "heic", "avif", "content type", "without images field", "empty multipart", "images",
                   "oversize body", "invalid base64", "json list", "top_k=0", "top_k=-1", "top_k=1000000000",
                   "top_k='three'"):
        assert needle in names, needle
    assert {f"exif orientation {o}" for o in range(1, 9)} <= {case.name for case in CORPUS}


def _check_answer(case: Case, response: httpx.Response) -> dict:
    assert response.status_code < 500, (case.name, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert response.status_code == case.status, (case.name, response.status_code, response.text[:300])
    if case.status != 200:
        assert body["error"]["reason"] == case.reason, body
        assert body["error"]["status"] == REASON_STATUS[case.reason] == case.status
        assert body["error"]["message"]
        return {"status": response.status_code, "reason": case.reason}
    results = body["results"]
    classified = [r for r in results if r.get("predictions")]
    failed = [r for r in results if r.get("error")]
    assert (len(classified), len(failed)) == (case.classified, case.failed), body
    for result in classified:
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        assert len(scores) == body["top_k"] >= 1
    return {"status": 200, "reason": None}


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_case(case, client, server):
    before = tree_memory_mib(server.process.pid)
    started = time.perf_counter()
    response = client.post("/classify", **case.request)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    after = tree_memory_mib(server.process.pid)
    outcome = _check_answer(case, response)
    outcome.update(ms=round(elapsed_ms, 1), rss_delta_mib=round(after["rss_mib"] - before["rss_mib"], 1),
                   hwm_delta_mib=round(after["hwm_mib"] - before["hwm_mib"], 1))
    OUTCOMES[case.name] = outcome
    assert answers(client, PROBE), f"server stopped answering after {case.name!r}:\n{server.log_tail()}"
    assert after["hwm_mib"] - before["hwm_mib"] < MEMORY_JUMP_MIB, (case.name, before, after)
    assert after["rss_mib"] - before["rss_mib"] < MEMORY_JUMP_MIB, (case.name, before, after)


# ---------------------------------------------------------------- nothing from a request touches the disk
def test_request_paths_are_never_opened_or_created(client, tmp_path):
    canary = tmp_path / "canary.png"
    canary.write_bytes(GOOD)  # a valid image: had the server opened this path, it would classify it
    target = tmp_path / f"created-{uuid.uuid4().hex}"
    traversal = "../" * 12 + str(target).lstrip("/")
    junk = b"not an image, whatever the filename says"
    attempts = [
        {"files": [("images", (str(canary), junk, "image/png"))]},
        {"files": [("images", (traversal, junk, "image/png"))]},
        {"files": [("images", ("../../etc/passwd", junk, "image/png"))]},
        {"json": {"images": [{"data": base64.b64encode(junk).decode(), "name": traversal}]}},
        {"json": {"images": [str(canary)]}},
        {"json": {"images": ["file://" + str(canary)]}},
        {"content": str(canary).encode(), "headers": {"content-type": "image/png"}},
        {"content": junk, "headers": {"content-type": "image/png"}, "params": {"path": str(canary)}},
    ]
    for request in attempts:
        response = client.post("/classify", **request)
        assert 400 <= response.status_code < 500, (request, response.status_code, response.text[:200])
        assert response.json()["error"]["reason"] in ("not_an_image", "bad_base64"), response.text
    # the name is only echoed back, never resolved
    named = client.post("/classify", files=[("images", (traversal, GOOD, "image/png"))])
    assert named.status_code == 200 and named.json()["results"][0]["filename"] == traversal
    assert not target.exists() and not (tmp_path / "etc").exists()
    assert canary.read_bytes() == GOOD


def test_zz_record_figures(client, server):
    """Last in the module: the corpus outcomes and the server's memory, for the README."""
    assert len(OUTCOMES) == len(CORPUS), "run the whole module to record figures"
    memory = tree_memory_mib(server.process.pid)
    by_status: dict[str, int] = {}
    for outcome in OUTCOMES.values():
        by_status[str(outcome["status"])] = by_status.get(str(outcome["status"]), 0) + 1
    bomb = next(v for k, v in OUTCOMES.items() if k.startswith("decompression bomb"))
    record("bad_input", {
        "cases": len(CORPUS), "by_status": by_status, "server_errors_5xx": 0,
        "limits": LIMITS.env(), "server_rss_mib_after_corpus": round(memory["rss_mib"], 1),
        "server_processes": memory["processes"],
        "max_rss_delta_mib": max(v["rss_delta_mib"] for v in OUTCOMES.values()),
        "max_hwm_delta_mib": max(v["hwm_delta_mib"] for v in OUTCOMES.values()),
        "bomb": {"status": bomb["status"], "reason": bomb["reason"], "ms": bomb["ms"],
                 "rss_delta_mib": bomb["rss_delta_mib"], "hwm_delta_mib": bomb["hwm_delta_mib"]},
        "outcomes": OUTCOMES,
    })
