"""Optional API keys on a real `imgcls serve`: Authorization: Bearer on inference and repository routes,
401 with WWW-Authenticate otherwise, health/metrics/ui open by default, keys never logged."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from imgcls.service.host.launcher import child_environment, free_port, start_server
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle, start_keyed_server

KEYS = ["k3y-alpha-4f9c2d", "second-key-77aa"]
WRONG = "wrong-key-zz9"
IMAGE = encode(make_image(64, 48, seed=5))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("auth-bundle"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    keys_text = f"# serving keys\n{KEYS[0]}\n\n  {KEYS[1]}  \n"
    handle = start_keyed_server(bundle, tmp_path_factory.mktemp("auth"), keys_text, ["--access-log"],
                                env={"IMGCLS_WORKERS": "1"})
    yield handle
    handle.stop()


def post_image(url: str, path: str = "/classify", key: str | None = None, scheme: str = "Bearer") -> httpx.Response:
    headers = {"Content-Type": "image/png", **({"Authorization": f"{scheme} {key}".strip()} if key is not None else {})}
    return httpx.post(url + path, content=IMAGE, headers=headers, timeout=30, trust_env=False)


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_inference_and_repository_routes_need_the_key(server):
    for key, scheme in ((None, "Bearer"), (WRONG, "Bearer"), ("", "Bearer"), (KEYS[0], "Basic"), (KEYS[0][:-1], "Bearer")):
        refused = post_image(server.url, key=key, scheme=scheme)
        assert_unauthorized(refused)
        assert refused.json()["error"]["reason"] == "unauthorized"
    for path in ("/model", "/models", "/v2/models/tiny", "/v2"):
        assert_unauthorized(httpx.get(server.url + path, trust_env=False))
    for path in ("/v2/repository/index", "/v2/repository/models/tiny/load", "/v2/models/tiny/infer"):
        refused = httpx.post(server.url + path, json={}, trust_env=False)
        assert_unauthorized(refused)
        assert isinstance(refused.json()["error"], str)  # the Open Inference Protocol's error document
    for key in KEYS:
        answer = post_image(server.url, key=key)
        assert answer.status_code == 200, answer.text
        index = httpx.post(server.url + "/v2/repository/index", headers={"Authorization": f"Bearer {key}"},
                           trust_env=False)
        assert index.status_code == 200 and index.json()[0]["state"] == "READY"


def test_health_metrics_and_ui_stay_open_by_default(server):
    for path in ("/livez", "/readyz", "/metrics", "/ui", "/v2/health/ready"):
        assert httpx.get(server.url + path, trust_env=False).status_code == 200, path
    post_image(server.url, key=WRONG)  # refused here, so that the test does not lean on the others having run
    metrics = httpx.get(server.url + "/metrics", trust_env=False).text
    assert 'status="401"' in metrics  # refusals are counted like every answer


def test_no_key_ever_reaches_the_log(server):
    post_image(server.url, key=WRONG)
    post_image(server.url, key=KEYS[0])
    log = server.log_path.read_text(errors="replace")
    assert "/classify" in log  # the access log is on: requests are logged...
    for secret in (*KEYS, WRONG):
        assert secret not in log  # ...their keys are not


def test_public_routes_can_be_narrowed(bundle, tmp_path):
    handle = start_keyed_server(bundle, tmp_path, KEYS[0] + "\n", ["--public-routes", "health"],
                                env={"IMGCLS_WORKERS": "1"})
    try:
        assert httpx.get(handle.url + "/readyz", trust_env=False).status_code == 200
        assert_unauthorized(httpx.get(handle.url + "/metrics", trust_env=False))
        assert_unauthorized(httpx.get(handle.url + "/ui", trust_env=False))
        authorised = httpx.get(handle.url + "/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}, trust_env=False)
        assert authorised.status_code == 200
    finally:
        handle.stop()


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", "serve", *args], capture_output=True, text=True,
                          env=child_environment({}), timeout=120)


def test_an_empty_or_missing_key_file_is_refused_at_start(bundle, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# no keys here\n   \n")
    port = str(free_port())
    for keys_file, words in ((empty, "holds no key"), (tmp_path / "missing.txt", "cannot read")):
        result = serve(str(bundle), "--port", port, "--api-keys-file", str(keys_file))
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr


def test_a_warning_when_listening_beyond_loopback_without_keys(tmp_path):
    result = serve(str(tmp_path / "no-bundle"), "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2  # the missing bundle stops it; the warning came first
    assert "without API keys" in result.stderr
    quiet = serve(str(tmp_path / "no-bundle"), "--port", str(free_port()))
    assert "without API keys" not in quiet.stderr


def server_environment(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_usage_tracking_is_off_unless_the_user_set_it(bundle, tmp_path, monkeypatch):
    """imgcls serve sets BENTOML_DO_NOT_TRACK=true for bentoml serve (BentoML otherwise posts usage data
    before it starts its workers); a value the user set is kept."""
    monkeypatch.delenv("BENTOML_DO_NOT_TRACK", raising=False)
    for given, expected in ((None, "true"), ("false", "false")):
        env = {"IMGCLS_WORKERS": "1", **({"BENTOML_DO_NOT_TRACK": given} if given else {})}
        handle = start_server(bundle, tmp_path / f"serve-{given}.log", env=env)
        try:
            assert server_environment(handle.process.pid).get("BENTOML_DO_NOT_TRACK") == expected
        finally:
            handle.stop()
