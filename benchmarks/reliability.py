"""What happens to requests in flight when the server is stopped (SIGTERM) or a worker dies (SIGKILL).

``python -m benchmarks.reliability`` builds a tiny bundle, starts the real ``imgcls serve`` and runs
``clients`` threads that each send ``POST /classify`` on a NEW connection per request (the worst
case for a drain: every request is a fresh accept). Every attempt is classified from the client's
side:

- ``refused``: the connection was refused, nothing was accepted (safe to retry elsewhere);
- ``answered``: an HTTP response came back (by status);
- ``lost``: the connection was established and the request sent, but no response came back
  (reset / closed): the request was accepted, or at least looked accepted, and then dropped.

``drain_trial`` sends SIGTERM to ``imgcls serve`` under load and reports the outcomes of the
requests sent before the signal (all must be answered: 0 lost, no 5xx), the exit status and the
time to exit. ``kill_trial`` SIGKILLs one worker process under load, samples ``/readyz`` through
the gap and reports which requests failed. Results go to ``benchmarks/results/reliability.json``.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from imgcls.service.host.launcher import Server, encode_multipart, http_status, start_server

log = logging.getLogger("benchmarks.reliability")
RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"


@dataclass(frozen=True)
class Attempt:
    started: float  # monotonic seconds
    ended: float
    outcome: str  # refused | answered | lost
    status: int = 0
    reason: str = ""


class Fleet:
    """``clients`` threads, each POSTing ``body`` on a new connection per request until stopped."""

    def __init__(self, url: str, body: bytes, content_type: str, clients: int = 16, timeout: float = 30.0) -> None:
        host_port = url.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.body, self.content_type, self.timeout = body, content_type, timeout
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"fleet-{i}", daemon=True) for i in range(clients)]

    def __enter__(self) -> "Fleet":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            attempt = self.send_one()
            with self._lock:
                self.attempts.append(attempt)
            if attempt.outcome != "answered":
                self._stop.wait(0.05)

    def send_one(self) -> Attempt:
        started = time.monotonic()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            try:
                connection.connect()
            except ConnectionRefusedError:
                return Attempt(started, time.monotonic(), "refused")
            connection.request("POST", "/classify", self.body, {"Content-Type": self.content_type})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return Attempt(started, time.monotonic(), "lost", reason=type(exc).__name__)
        finally:
            connection.close()
        return Attempt(started, time.monotonic(), "answered", response.status, _reason(payload))


def _reason(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", {}).get("reason", ""))
    except (ValueError, AttributeError):
        return ""


def tally(attempts: list[Attempt]) -> dict[str, object]:
    """Counts by outcome, by status, and the reasons of non-200 answers."""
    answered = [a for a in attempts if a.outcome == "answered"]
    return {
        "sent": len(attempts),
        "refused": sum(a.outcome == "refused" for a in attempts),
        "answered": len(answered),
        "lost": sum(a.outcome == "lost" for a in attempts),
        "answered_5xx": sum(a.status >= 500 for a in answered),
        "statuses": dict(Counter(str(a.status) for a in answered)),
        "failures": dict(Counter(f"{a.status} {a.reason}".strip() if a.outcome == "answered" else
                                 f"{a.outcome} {a.reason}".strip() for a in attempts
                                 if a.outcome != "answered" or a.status != 200)),
    }


def worker_pids(server: Server) -> list[int]:
    """The BentoML worker processes (``_bentoml_impl.worker.service``) under ``imgcls serve``."""
    import psutil

    pids = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker.service" in child.cmdline():
                pids.append(child.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return sorted(pids)


def held_connections(pid: int, port: int) -> int:
    """Established connections to ``port`` that process ``pid`` has accepted (its in-flight requests)."""
    import psutil

    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def payload() -> tuple[bytes, str]:
    """One 320x240 JPEG as a multipart body."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 140, 200)).save(buffer, format="JPEG")
    return encode_multipart([("probe.jpg", buffer.getvalue(), "image/jpeg")])


@dataclass
class DrainResult:
    workers: int
    clients: int
    exit_code: int
    exit_s: float  # signal -> process gone
    before_signal: dict[str, object] = field(default_factory=dict)  # requests started before SIGTERM
    after_signal: dict[str, object] = field(default_factory=dict)  # started after: refused is right


def drain_trial(bundle: Path, log_dir: Path, *, workers: int = 2, clients: int = 16, load_s: float = 2.0,
                extra_env: dict[str, str] | None = None) -> DrainResult:
    """SIGTERM ``imgcls serve`` after ``load_s`` of load; requests sent before it must all be answered."""
    body, content_type = payload()
    env = {"IMGCLS_WORKERS": str(workers), **(extra_env or {})}
    server = start_server(bundle, log_dir / f"drain-{workers}.log", env=env)
    try:
        with Fleet(server.url, body, content_type, clients) as fleet:
            time.sleep(load_s)
            signalled = time.monotonic()
            os.killpg(server.process.pid, signal.SIGTERM)
            code = server.process.wait(60)
            exit_s = time.monotonic() - signalled
            time.sleep(0.3)
        before = [a for a in fleet.attempts if a.started < signalled]
        after = [a for a in fleet.attempts if a.started >= signalled]
        return DrainResult(workers, clients, code, round(exit_s, 2), tally(before), tally(after))
    finally:
        server.stop()


@dataclass
class KillResult:
    workers: int
    clients: int
    killed_pid: int
    held_by_victim: int  # connections the killed worker had accepted (counted while it was stopped)
    restarted_s: float  # kill -> a new worker process exists
    ready_again_s: float  # kill -> /readyz 200 again
    readyz: dict[str, int]  # statuses of /readyz sampled during the gap
    during_gap: dict[str, object] = field(default_factory=dict)  # requests started while not ready
    in_flight_at_kill: dict[str, object] = field(default_factory=dict)
    overall: dict[str, object] = field(default_factory=dict)


def kill_trial(bundle: Path, log_dir: Path, *, workers: int = 2, clients: int = 16, load_s: float = 2.0,
               after_s: float = 2.0, extra_env: dict[str, str] | None = None) -> KillResult:
    """SIGKILL one worker under load; sample /readyz until it is ready again, keep loading ``after_s``."""
    body, content_type = payload()
    env = {"IMGCLS_WORKERS": str(workers), **(extra_env or {})}
    server = start_server(bundle, log_dir / f"kill-{workers}.log", env=env)
    try:
        before_pids = worker_pids(server)
        with Fleet(server.url, body, content_type, clients) as fleet:
            time.sleep(load_s)
            victim = before_pids[0]
            os.kill(victim, signal.SIGSTOP)  # frozen: what it holds cannot change while we count
            held = held_connections(victim, fleet.port)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            samples, restarted, ready_again = _watch_gap(server, set(before_pids), killed)
            time.sleep(after_s)
        gap_end = killed + ready_again
        in_flight = [a for a in fleet.attempts if a.started < killed <= a.ended]
        gap = [a for a in fleet.attempts if killed <= a.started < gap_end]
        return KillResult(workers, clients, victim, held, round(restarted, 2), round(ready_again, 2),
                          dict(Counter(str(s) for s in samples)), tally(gap), tally(in_flight),
                          tally(fleet.attempts))
    finally:
        server.stop()


def _watch_gap(server: Server, old: set[int], killed: float, limit_s: float = 60.0) -> tuple[list, float, float]:
    samples: list[int | None] = []
    restarted = float("nan")
    while time.monotonic() - killed < limit_s:
        status = http_status(server.url + "/readyz", timeout=2.0)
        samples.append(status)
        if restarted != restarted and set(worker_pids(server)) - old:
            restarted = time.monotonic() - killed
        if status == 200 and restarted == restarted and len(samples) > 1:
            return samples, restarted, time.monotonic() - killed
        time.sleep(0.05)
    raise RuntimeError(f"not ready again within {limit_s:.0f} s after the kill: {server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle to serve (default: a tiny one, built)")
    parser.add_argument("--warmup-delay", type=float, default=2.0,
                        help="kill trial: IMGCLS_WARMUP_DELAY_S, so a worker accepting before it is warm shows")
    args = parser.parse_args(argv)
    from tests.factories import make_tiny_bundle

    kill_env = {"IMGCLS_WARMUP_DELAY_S": str(args.warmup_delay)}
    trials = {"drain_1_worker": (drain_trial, 1, {}), "drain_2_workers": (drain_trial, 2, {}),
              "kill_1_of_2_workers": (partial(kill_trial, after_s=8.0), 2, kill_env)}  # covers a restart's warm-up
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-reliability-") as tmp:
        bundle = args.bundle or make_tiny_bundle(Path(tmp))
        for name, (trial, workers, env) in trials.items():
            results[name] = asdict(trial(bundle, Path(tmp), workers=workers, clients=args.clients, extra_env=env))
            log.info("%s: %s", name, json.dumps(results[name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
