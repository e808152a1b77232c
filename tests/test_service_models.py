"""Many models in one real `imgcls serve` (2 workers): a model repository, /classify's model parameter,
/v2 per model, the repository extension, replacing a version under load, a refused bundle.

Tiny bundles (tests/factories.py) with different weights, so each version has its own sha256.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from imgcls.service.host.launcher import child_environment, free_port, start_server
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle

IMAGE = encode(make_image(64, 48, seed=3))


def install(bundle: Path, target: Path) -> Path:
    """Copy a bundle into a repository the way a deployment should: beside it, then one rename."""
    incoming = target.parent / f".incoming-{target.name}"
    shutil.copytree(bundle, incoming)
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming.rename(target)
    return target


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Three tiny bundles with different weights (seed 0, 1, 2)."""
    root = tmp_path_factory.mktemp("model-bundles")
    return [make_tiny_bundle(root / f"seed{seed}", seed=seed) for seed in range(3)]


@pytest.fixture(scope="module")
def repository(bundles, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    install(bundles[0], repo / "alpha")  # a bundle directly
    install(bundles[1], repo / "beta" / "1")  # numbered versions: the highest is served
    (repo / "notes").mkdir()  # not a bundle: skipped with a log line, listed as unavailable
    (repo / "notes" / "README.txt").write_text("not a model")
    return repo


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("models-log") / "serve.log"
    handle = start_server(repository, log, env={"IMGCLS_WORKERS": "2"}, args=["--poll-s", "0.5"])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        yield client


def classify(http: httpx.Client, model: str | None = None, fresh: bool = False, **params) -> httpx.Response:
    """``fresh``: a new connection (the workers share the socket: answers then come from both)."""
    query = {**({"model": model} if model is not None else {}), **params}
    headers = {"Content-Type": "image/png", **({"Connection": "close"} if fresh else {})}
    return http.post("/classify", params=query, content=IMAGE, headers=headers)


def version_of(http: httpx.Client, name: str) -> str:
    return {m["name"]: m["version"] for m in http.get("/models").json()["models"]}[name]


def test_a_repository_serves_every_bundle_and_lists_the_rest(http, server):
    index = http.post("/v2/repository/index")
    assert index.status_code == 200
    states = {entry["name"]: (entry["state"], entry["reason"]) for entry in index.json()}
    assert states["alpha"][0] == states["beta"][0] == "READY"
    assert states["notes"][0] == "UNAVAILABLE" and "not a bundle" in states["notes"][1]
    assert "notes" in server.log_tail() and "skipping" in server.log_tail()
    assert [m["name"] for m in http.get("/models").json()["models"]] == ["alpha", "beta"]
    assert version_of(http, "beta").startswith("1@")  # the version folder names the version


def test_classify_names_the_model_or_says_which_exist(http):
    missing = classify(http)
    assert missing.status_code == 400 and missing.json()["error"]["reason"] == "model_required"
    assert "alpha" in missing.json()["error"]["message"] and "beta" in missing.json()["error"]["message"]
    for name in ("alpha", "beta"):
        answer = classify(http, name)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["name"] == name
        assert answer.json()["model"]["version"] == answer.headers["x-model-version"] == version_of(http, name)
    assert classify(http, "alpha").json()["model"]["version"] != classify(http, "beta").json()["model"]["version"]
    unknown = classify(http, "gamma-9")
    assert unknown.status_code == 404 and unknown.json()["error"]["reason"] == "unknown_model"
    assert "gamma-9" in unknown.json()["error"]["message"]
    for bad in ("../alpha", "a/b", "..", "alpha%00"):
        refused = classify(http, bad)
        assert refused.status_code == 400 and refused.json()["error"]["reason"] == "bad_model_name", bad
    json_form = http.post("/classify", json={"images": [__import__("base64").b64encode(IMAGE).decode()],
                                             "model": "beta", "top_k": 2})
    assert json_form.status_code == 200 and json_form.json()["model"]["name"] == "beta"


def test_model_and_v2_answer_per_model(http):
    assert http.get("/model").json()["error"]["reason"] == "model_required"
    assert http.get("/model", params={"model": "beta"}).json()["name"] == "beta"
    assert http.get("/model", params={"model": "nope"}).status_code == 404
    for name in ("alpha", "beta"):
        meta = http.get(f"/v2/models/{name}")
        assert meta.status_code == 200 and meta.json()["name"] == name
        assert http.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert http.get("/v2/models/nope").status_code == 404
    metrics = http.get("/metrics").text
    assert 'imgcls_requests_total{model="alpha"' in metrics and 'imgcls_requests_total{model="beta"' in metrics
    assert "gamma-9" not in metrics and "../alpha" not in metrics  # labels bounded by the models served


def test_load_and_unload_of_a_missing_model_are_typed_4xx(http):
    for action in ("load", "unload"):
        missing = http.post(f"/v2/repository/models/no-such-model/{action}")
        assert missing.status_code == 404 and "no-such-model" in missing.json()["error"], missing.text
        bad = http.post(f"/v2/repository/models/..%2Fetc/{action}")
        assert bad.status_code in (400, 404), bad.text
    notes = http.post("/v2/repository/models/notes/load")
    assert notes.status_code == 400 and "not a bundle" in notes.json()["error"]


def test_unload_then_load_again(http):
    unloaded = http.post("/v2/repository/models/alpha/unload")
    assert unloaded.status_code == 200 and unloaded.json()["workers"] == 2
    for _ in range(8):  # every worker: the call answered once all of them applied it
        assert classify(http, "alpha", fresh=True).status_code == 404
    time.sleep(1.2)  # two polls of the repository (--poll-s 0.5): an unloaded model stays out
    assert classify(http, "alpha", fresh=True).status_code == 404
    assert classify(http).status_code == 200  # one model left: the name may be left out
    loaded = http.post("/v2/repository/models/alpha/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY", loaded.text
    for _ in range(8):
        assert classify(http, "alpha", fresh=True).status_code == 200


def test_a_new_version_replaces_the_old_under_load_with_no_failed_request(http, server, bundles, repository):
    """Clients keep asking while version 2 arrives: nothing fails, answers name the old version until the
    load call returns (it returns once every worker serves the new one) and the new one afterwards."""
    old = version_of(http, "beta")
    answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60.0) as own:
            while not stop.is_set():
                sent = time.monotonic()
                response = classify(own, "beta", fresh=True)
                version = response.json().get("model", {}).get("version", "") if response.status_code == 200 else ""
                answers.append((sent, time.monotonic(), response.status_code, version))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    install(bundles[2], repository / "beta" / "2")
    called = time.monotonic()
    loaded = http.post("/v2/repository/models/beta/load")
    returned = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert loaded.status_code == 200, loaded.text
    new = loaded.json()["version"]
    assert new.startswith("2@") and new != old
    assert [a for a in answers if a[2] != 200] == []
    assert {a[3] for a in answers} <= {old, new}
    assert all(version == old for sent, done, _, version in answers if done < called)
    after = [version for sent, done, _, version in answers if sent > returned]
    assert after and set(after) == {new}
    assert len([a for a in answers if a[1] < called]) > 4  # the loop really ran before the swap
    assert loaded.json()["workers"] == 2  # the call answered once both workers served the new version


def test_a_corrupt_bundle_dropped_into_the_repository_is_refused(http, server, bundles, repository):
    served = version_of(http, "beta")
    broken = repository / "beta" / ".incoming-9"
    shutil.copytree(bundles[0], broken)
    onnx = broken / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the card's sha256 no longer matches
    onnx.write_bytes(bytes(data))
    broken.rename(repository / "beta" / "9")
    deadline = time.monotonic() + 20
    while "beta refused" not in server.log_tail(100_000) and time.monotonic() < deadline:
        time.sleep(0.2)
    refusals = [line for line in server.log_tail(100_000).splitlines() if "beta refused" in line]
    assert refusals and "beta/9" in refusals[0] and "sha256" in refusals[0].lower(), refusals
    for _ in range(8):
        answer = classify(http, "beta", fresh=True)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == served
    refused = http.post("/v2/repository/models/beta/load")
    assert refused.status_code == 400 and "sha256" in refused.json()["error"].lower(), refused.text
    assert version_of(http, "beta") == served
    shutil.rmtree(repository / "beta" / "9")


def test_polling_adds_a_new_model(http, bundles, repository):
    install(bundles[1], repository / "gamma")
    deadline = time.monotonic() + 30

    def everywhere() -> bool:  # 8 answers on fresh connections: both workers serve it
        return all(classify(http, "gamma", fresh=True).status_code == 200 for _ in range(8))

    while not everywhere():
        assert time.monotonic() < deadline, "the new model did not reach every worker within 30 s"
        time.sleep(0.3)
    assert {e["name"]: e["state"] for e in http.post("/v2/repository/index").json()}["gamma"] == "READY"


def test_a_corrupt_model_in_the_repository_at_start_leaves_the_others_serving(bundles, tmp_path):
    repo = tmp_path / "repo"
    install(bundles[0], repo / "good")
    broken = install(bundles[1], repo / "broken" / "1")
    (broken / "model.onnx").write_bytes(b"not the file the card describes")
    handle = start_server(repo, tmp_path / "serve.log", env={"IMGCLS_WORKERS": "1"})
    try:
        with httpx.Client(base_url=handle.url, timeout=60.0) as http:
            assert classify(http, "good").status_code == 200
            refused = classify(http, "broken")
            assert refused.status_code == 404 and refused.json()["error"]["reason"] == "unknown_model"
            index = {e["name"]: e for e in http.post("/v2/repository/index").json()}
            assert index["good"]["state"] == "READY" and index["broken"]["state"] == "UNAVAILABLE"
            assert "broken" in index["broken"]["reason"]
        assert "leaving out broken" in handle.log_tail(100_000)
    finally:
        handle.stop()
    only_broken = tmp_path / "only-broken"
    install(broken, only_broken / "broken" / "1")
    result = subprocess.run([sys.executable, "-m", "imgcls", "serve", str(only_broken), "--port", str(free_port())],
                            capture_output=True, text=True, env=child_environment({}), timeout=120)
    assert result.returncode == 2 and "no model of the repository could be loaded" in result.stderr
