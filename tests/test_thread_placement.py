"""Which CPUs a worker's threads may run on (imgcls.service.priority): the request threads of each worker on
a CPU of their own, the computing threads and ONNX Runtime's on every CPU. The real server's placement is
checked in tests/test_grpc_spread.py."""
from __future__ import annotations

import os
import threading

import pytest

from imgcls.service import priority
from imgcls.service.host.serve import build_parser, config_from

MANY_CPUS = len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else False


def test_each_worker_gets_the_next_cpu_unless_a_quota_shares_them(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5, 7})
    assert [priority.io_cpu(worker, 6, None) for worker in range(1, 7)] == [2, 3, 5, 7, 2, 3]
    assert priority.io_cpu(1, 1, None) is None  # one worker: nobody to wait behind
    assert priority.io_cpu(2, 2, 4.0) == 3  # a quota of every visible CPU: they are ours
    assert priority.io_cpu(2, 2, 2.0) is None  # 2 CPUs' worth spread over 4 shared ones: tie nothing
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert priority.io_cpu(1, 2, None) is None


def in_thread(work) -> object:
    box = []
    thread = threading.Thread(target=lambda: box.append(work()))
    thread.start()
    thread.join(10)
    return box[0]


@pytest.mark.skipif(not MANY_CPUS, reason="needs 2 CPUs to tie a thread to one of them")
def test_threads_a_tied_thread_starts_are_tied_but_computing_and_onnx_runtime_ones_are_not():
    everywhere = os.sched_getaffinity(0)
    cpu = max(everywhere)

    def tied_starter() -> dict[str, set[int]]:
        priority.pin_this_thread(cpu)
        seen = {"tied": os.sched_getaffinity(0),
                "started": in_thread(lambda: os.sched_getaffinity(0)),
                "computing": in_thread(lambda: (priority.as_computing_thread(0), os.sched_getaffinity(0))[1])}
        with priority.on_all_cpus():
            seen["inside on_all_cpus"] = in_thread(lambda: os.sched_getaffinity(0))
        seen["after on_all_cpus"] = os.sched_getaffinity(0)
        return seen

    seen = in_thread(tied_starter)
    assert seen == {"tied": {cpu}, "started": {cpu}, "computing": everywhere, "inside on_all_cpus": everywhere,
                    "after on_all_cpus": {cpu}}
    assert os.sched_getaffinity(0) == everywhere  # only the thread that asked was tied


def test_the_flag_and_its_variable_turn_it_off(tmp_path):
    assert config_from(build_parser().parse_args([str(tmp_path)]), {}).pin_io_threads is True
    assert config_from(build_parser().parse_args([str(tmp_path), "--no-pin-io-threads"]), {}).pin_io_threads is False
    from_variable = config_from(build_parser().parse_args([str(tmp_path)]), {"IMGCLS_PIN_IO_THREADS": "0"})
    assert from_variable.pin_io_threads is False
