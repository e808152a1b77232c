"""deploy/'s dashboard and rules, evaluated by a real Prometheus scraping a real `imgcls serve`.

Debian's prometheus (installed when missing) scrapes the server on loopback every second with
deploy/prometheus/rules.yml loaded; after real traffic (good images, a non-image) every Grafana
panel query, every recording rule and the measured side of every alert must return a finite value
through Prometheus' HTTP API, and every metric they name must be one the service exports.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import time
from datetime import datetime

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException

from imgcls.service.host.launcher import LOOPBACK, free_port, start_server
from tests.conftest import REPO_ROOT, encode, make_image
from tests.factories import make_tiny_bundle
from tests.system_tools import require

pytestmark = pytest.mark.slow
DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "imgcls.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                "unless", "le", "inf", "nan"}
ALERT_SHAPE = re.compile(r"^(?P<measured>.+?)\s*(?:>|<|>=|<=|==|!=)\s*[-+0-9.e]+\s*$", re.S)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def measured(expr: str) -> str:
    """An alert's expression without its threshold (the part that must return data)."""
    match = ALERT_SHAPE.match(expr.strip())
    assert match, f"alert expression not of the form '<measured> <op> <number>': {expr}"
    return match["measured"]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, label matchers, groupings and ranges removed)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d*", n)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("prom-bundle"))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    grpc_port = free_port()
    handle = start_server(bundle, tmp_path_factory.mktemp("prom-log") / "serve.log", env={"IMGCLS_WORKERS": "2"},
                          args=["--grpc-port", str(grpc_port), "--model-name", "m"])
    handle.grpc_url = f"{LOOPBACK}:{grpc_port}"
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    binary = require("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "imgcls", "static_configs": [{"targets": [server.url.split("://")[1]]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                                f"--web.listen-address={LOOPBACK}:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:  # until it is ready Prometheus answers its API with a plain-text 503
        _wait_for(lambda: httpx.get(url + "/-/ready", timeout=10, trust_env=False).status_code == 200, 60,
                  "Prometheus never became ready")
        _wait_for(lambda: _instant(url, 'up{job="imgcls"}') == [1.0], 60, "Prometheus never scraped imgcls")
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def _instant(url: str, expr: str) -> list[float]:
    response = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10, trust_env=False)
    assert response.headers.get("content-type", "").startswith("application/json"), (expr, response.status_code,
                                                                                     response.text[:500])
    answer = response.json()
    assert answer["status"] == "success", (expr, answer)
    return [float(sample["value"][1]) for sample in answer["data"]["result"]]


def _wait_for(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def traffic(server, prometheus):
    """Good images and a non-image for a few scrapes (over HTTP, and a ModelInfer call and a refused one over
    gRPC), then wait for the rules to see them."""
    good = [("images", (f"{i}.png", encode(make_image(60 + i, 50, seed=i)), "image/png")) for i in range(3)]
    grpc_client = triton.InferenceServerClient(server.grpc_url)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([good[0][1][1]], dtype=object))
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
        for round_ in range(12):
            assert grpc_client.infer("m", [image]).as_numpy("probabilities").shape == (1, 3)
            with pytest.raises(InferenceServerException, match="unknown model"):
                grpc_client.infer("nope", [image])
            assert client.post("/classify", files=good, data={"top_k": "2"}).status_code == 200
            bad = client.post("/classify", files=[("images", ("x.txt", b"not an image", "text/plain"))])
            assert bad.status_code == 415 or bad.status_code == 400, bad.text
            time.sleep(0.5)
    # every rule must have seen all of it: a scrape after the last request, then a group evaluation after
    # that scrape (the recording group runs every 15 s; a rule evaluated mid-traffic may still be empty)
    seen_by = time.time() + 2.0
    _wait_for(lambda: _last_evaluation(prometheus, "imgcls.recording") > seen_by, 60,
              "the recording rules were never evaluated after the traffic")
    return prometheus


def _last_evaluation(url: str, group: str) -> float:
    """Unix time of the rule group's last evaluation (0 before the first)."""
    groups = httpx.get(url + "/api/v1/rules", timeout=10, trust_env=False).json()["data"]["groups"]
    stamp = next(g["lastEvaluation"] for g in groups if g["name"] == group)
    if stamp.startswith("0001-"):
        return 0.0
    whole, _, rest = stamp.partition(".")
    fraction = re.match(r"\d*", rest)[0] if rest else ""
    zone = rest[len(fraction):] if rest else whole[19:]
    parsed = datetime.fromisoformat(whole[:19] + ("." + fraction[:6] if fraction else "") + zone.replace("Z", "+00:00"))
    return parsed.timestamp()


def test_promtool_accepts_the_rules():
    promtool = require("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_named_metric_is_exported_or_recorded(traffic):
    """After traffic: a labelled series (gRPC's, by method) exists from its first call on."""
    exported = set(httpx.get(traffic + "/api/v1/label/__name__/values", timeout=10, trust_env=False).json()["data"])
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    expressions = [expr for _, expr in dashboard_queries()] + [rule["expr"] for rule in rules()]
    named = set().union(*(metric_names(expr) for expr in expressions))
    assert {"imgcls_requests_total", "imgcls_top1_confidence_bucket", "imgcls_workers_ready"} <= named
    unknown = {name for name in named if name not in exported and name not in recorded}
    assert not unknown, f"queries name metrics imgcls does not export: {sorted(unknown)}"


def test_metric_name_extraction_catches_a_wrong_name():
    assert metric_names('sum by (le) (rate(imgcls_nope_bucket{route="/x"}[5m])) / up') == {"imgcls_nope_bucket", "up"}


def _finite(url: str, expr: str) -> list[float]:
    return [v for v in _instant(url, expr) if math.isfinite(v)]


def test_every_dashboard_query_returns_data(traffic):
    empty = [(title, expr) for title, expr in dashboard_queries() if not _finite(traffic, expr)]
    assert not empty, f"panel queries without data: {empty}"


def test_every_rule_returns_data(traffic):
    empty = []
    for rule in rules():
        expr = rule["expr"] if "record" in rule else measured(rule["expr"])
        if not _finite(traffic, expr):
            empty.append((rule.get("record") or rule["alert"], expr))
    assert not empty, f"rules without data: {empty}"


def test_figures_match_the_traffic(traffic):
    ok = sum(_instant(traffic, 'sum(imgcls_requests_total{outcome="ok"})'))
    rejected = _instant(traffic, 'sum by (reason) (imgcls_requests_total{outcome="rejected"}) > 0')
    assert ok == 12 and sum(rejected) == 12
    grpc_calls = _instant(traffic, 'sum by (outcome) (imgcls_oip_requests_total{route="grpc:ModelInfer"}) > 0')
    assert sorted(grpc_calls) == [12.0, 12.0]  # answered, refused (unknown model)
    assert _instant(traffic, 'sum(imgcls_grpc_request_duration_seconds_count{method="ModelInfer"})') == [24.0]
    assert _instant(traffic, "max(imgcls_workers_ready)") == [2.0]
    assert sum(_instant(traffic, "imgcls:prediction_share:rate1h")) == pytest.approx(1.0)


def _ok_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("imgcls_requests_total{") and 'outcome="ok"' in line)


def test_a_second_server_on_the_host_neither_sees_nor_wipes_the_metrics(server, traffic, bundle, tmp_path):
    before = _ok_count(server.url)
    assert before >= 12
    with start_server(bundle, tmp_path / "second.log", env={"IMGCLS_WORKERS": "1"}) as second:
        assert _ok_count(second.url) == 0  # its own metrics, not the first server's
        assert _ok_count(server.url) == before  # and starting it did not reset the first one's
