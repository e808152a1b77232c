"""SIGTERM under load and a worker killed under load, against the real `imgcls serve` (2 workers).

16 client threads each send POST /classify on a new connection per request
(``benchmarks.reliability``, which also produces the README's figures).
"""
from __future__ import annotations

import pytest

from benchmarks.reliability import drain_trial, kill_trial
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow
CLIENTS = 16
GRACE_S = 20.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("reliability-bundle"))


def test_sigterm_answers_every_accepted_request_and_exits_0(bundle, tmp_path):
    result = drain_trial(bundle, tmp_path, workers=2, clients=CLIENTS, extra_env={"IMGCLS_GRACE_S": str(GRACE_S)})
    before, after = result.before_signal, result.after_signal
    assert result.exit_code == 0 and result.exit_s < GRACE_S, result
    assert before["sent"] > CLIENTS and before["lost"] == 0 and before["answered_5xx"] == 0, result
    assert before["answered"] == before["sent"], result  # nothing sent before the signal was refused either
    # after the signal the socket stops listening: new connections are refused (safe to retry), not
    # reset; only connections already queued by the kernel when it stopped can be (at most one per client)
    assert after["refused"] > 0 and after["answered_5xx"] == 0 and after["lost"] <= CLIENTS, result


def test_killed_worker_loses_only_its_requests_and_readyz_tells(bundle, tmp_path):
    # the warm-up delay makes a restarted worker that accepted before it was warm answer 503s
    result = kill_trial(bundle, tmp_path, workers=2, clients=CLIENTS, extra_env={"IMGCLS_WARMUP_DELAY_S": "2"})
    assert result.restarted_s < 30 and result.ready_again_s >= result.restarted_s, result
    assert result.readyz.get("503", 0) > 0, result  # the gap is visible to the orchestrator
    gap = result.during_gap
    assert gap["sent"] > 0 and gap["lost"] == 0 and gap["answered_5xx"] == 0, result  # the survivor serves all
    assert result.in_flight_at_kill["lost"] <= result.held_by_victim, result  # only the dead worker's
    assert result.overall["answered_5xx"] == 0 and result.overall["lost"] == result.in_flight_at_kill["lost"], result
