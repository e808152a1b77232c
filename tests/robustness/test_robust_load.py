"""Load: 64 concurrent keep-alive clients on loopback against the real server (Lite0, default settings).

Every answer must be 200 or the documented 503 shedding (reason ``overloaded``); no connection may
fail; the resident memory of the server's processes (sampled from /proc every 0.5 s) may grow less
than 5 % between the first and the last window of the run. `make test` runs 10 s (3 s windows);
`make soak` (IMGCLS_SOAK=1) runs the full 60 s with 10 s windows. p50/p99, throughput and the 503
share are recorded in the figures file.
"""
from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest

from benchmarks.loadgen import multipart_request, run_load
from tests.robustness.bundles import photo
from tests.robustness.corpus import encode
from tests.robustness.harness import SOAK, lite0_bundle, record, start_server, tree_memory_mib

CONCURRENCY = 64
DURATION_S = 60.0 if SOAK else 10.0
WINDOW_S = 10.0 if SOAK else 3.0
MAX_REQUESTS = 200_000  # a bound, far above what 2 cores answer in the time
WARMUP_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = lite0_bundle(tmp_path_factory)
    handle = start_server(bundle, tmp_path_factory.mktemp("load-log") / "serve.log", ready_timeout=120)
    yield handle
    handle.stop()


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter() - started, tree_memory_mib(self.pid)["rss_mib"]))
            self.stopped.wait(self.every_s)

    def window_mean(self, start: float, end: float) -> float:
        return statistics.fmean(rss for t, rss in self.samples if start <= t <= end)


@pytest.mark.slow
def test_64_clients_without_errors_or_memory_growth(server):
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    request = multipart_request("/classify", "images", [("chelsea.jpg", encode(photo("chelsea"), "JPEG", quality=90),
                                                         "image/jpeg")])
    warm = run_load(host, port, request, CONCURRENCY, WARMUP_S, MAX_REQUESTS)  # connections, allocator, caches
    sampler = MemorySampler(server.process.pid)
    sampler.start()
    result = run_load(host, port, request, CONCURRENCY, DURATION_S, MAX_REQUESTS)
    sampler.stopped.set()
    sampler.join()
    summary = result.summary()
    statuses = {int(k): v for k, v in summary["statuses"].items()}
    first = sampler.window_mean(0.0, WINDOW_S)
    last = sampler.window_mean(result.duration_s - WINDOW_S, result.duration_s)
    growth = (last - first) / first
    shed = statuses.get(503, 0) / max(1, summary["requests"])
    figures = {
        "concurrency": CONCURRENCY, "duration_s": round(result.duration_s, 1), "soak": SOAK,
        "requests": summary["requests"], "statuses": statuses, "connection_errors": summary["connection_errors"],
        "throughput_rps": round(summary["throughput_rps"], 1), "p50_ms": round(summary["p50_ms"], 1),
        "p99_ms": round(summary["p99_ms"], 1), "share_503": round(shed, 4),
        "rss_first_window_mib": round(first, 1), "rss_last_window_mib": round(last, 1),
        "rss_growth_pct": round(100 * growth, 2), "window_s": WINDOW_S,
        "warmup": {"seconds": WARMUP_S, "requests": warm.summary()["requests"], "statuses": dict(warm.statuses)},
        "model": "efficientnet_lite0 (ImageNet, fp32, 224 px), 451x300 JPEG, default server settings",
    }
    record("load_soak" if SOAK else "load_short", figures)
    assert summary["connection_errors"] == 0, figures
    assert set(statuses) <= {200, 503}, figures
    assert statuses.get(200, 0) > 0, figures
    assert growth < 0.05, figures
    with httpx.Client(base_url=server.url, timeout=30) as client:  # still ready afterwards
        assert client.get("/readyz").status_code == 200
