"""SIGTERM under load and a worker killed under load, against the real `imgcls serve` (2 workers).

16 client threads each send POST /classify on a new connection per request
(``benchmarks.reliability``, which also produces the README's figures).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from benchmarks.reliability import drain_trial, kill_trial
from imgcls.service.host.config import ServiceConfig
from imgcls.service.host.supervise import KILL_MARGIN_S, _wait
from tests.factories import make_tiny_bundle

CLIENTS = 16
GRACE_S = ServiceConfig().grace  # the default: must fit `docker stop`'s 10 s


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("reliability-bundle"))


@pytest.mark.slow
def test_sigterm_answers_every_accepted_request_and_exits_0(bundle, tmp_path):
    result = drain_trial(bundle, tmp_path, workers=2, clients=CLIENTS)
    before, after = result.before_signal, result.after_signal
    assert result.exit_code == 0 and result.exit_s < GRACE_S, result
    assert before["sent"] > CLIENTS and before["lost"] == 0 and before["answered_5xx"] == 0, result
    assert before["answered"] == before["sent"], result  # nothing sent before the signal was refused either
    # after the signal the socket stops listening: new connections are refused (safe to retry), not
    # reset; only connections already queued by the kernel when it stopped can be (at most one per client)
    assert after["refused"] > 0 and after["answered_5xx"] == 0 and after["lost"] <= CLIENTS, result


@pytest.mark.slow
def test_killed_worker_loses_only_its_requests_and_readyz_tells(bundle, tmp_path):
    # the warm-up delay makes a restarted worker that accepted before it was warm answer 503s
    result = kill_trial(bundle, tmp_path, workers=2, clients=CLIENTS, extra_env={"IMGCLS_WARMUP_DELAY_S": "2"})
    assert result.restarted_s < 30 and result.ready_again_s >= result.restarted_s, result
    assert result.readyz.get("503", 0) > 0, result  # the gap is visible to the orchestrator
    gap = result.during_gap
    assert gap["sent"] > 0 and gap["lost"] == 0 and gap["answered_5xx"] == 0, result  # the survivor serves all
    assert result.in_flight_at_kill["lost"] <= result.held_by_victim, result  # only the dead worker's
    assert result.overall["answered_5xx"] == 0 and result.overall["lost"] == result.in_flight_at_kill["lost"], result


def test_default_grace_fits_docker_stop():
    assert GRACE_S + KILL_MARGIN_S < 10.0


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period():
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.stdout.readline().strip() == b"up"
    stubborn.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = _wait(stubborn, [signal.SIGTERM], limit_s=1.0)
    assert code == 1 and stubborn.returncode == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 5.0
