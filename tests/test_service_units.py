"""Service parts without a server: batch plan and batcher, upload parsing helpers, config, serve flags."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from imgcls.service.engine.batcher import BatchPlan, MicroBatcher, Overloaded
from imgcls.models.core.errors import ConfigError
from imgcls.service.host.config import ServiceConfig
from imgcls.service.host.arbiter import check_sources
from imgcls.service.host.serve import build_parser, config_from
from imgcls.service.engine.settings import check_model_name, resolve_top_k
from imgcls.service.engine.types import BadParameter
from imgcls.service.protocols.classify.uploads import RequestRejected, parse_top_k
from imgcls.service.protocols.encoding import decode_base64


def test_cpu_plan_splits_into_warmed_sizes_and_gpu_plan_pads():
    cpu = BatchPlan.for_device(16, on_gpu=False)
    assert cpu.sizes == (1, 2, 4, 8, 16)
    assert cpu.chunks(13) == [(8, 8), (4, 4), (1, 1)]
    assert cpu.chunks(37) == [(16, 16), (16, 16), (4, 4), (1, 1)]
    gpu = BatchPlan.for_device(12, on_gpu=True)
    assert gpu.sizes == (1, 2, 4, 8, 12)
    assert gpu.chunks(5) == [(5, 8)] and gpu.chunks(13) == [(12, 12), (1, 1)]


def test_auto_batch_size_is_smaller_on_cpu_than_on_gpu():
    assert ServiceConfig().max_batch_size == 0, "the default is auto"
    assert BatchPlan.for_device(0, on_gpu=False, threads=1).sizes == (1, 2)  # one thread: batches gain nothing
    assert BatchPlan.for_device(0, on_gpu=False, threads=2).sizes == (1, 2, 4, 8)
    assert BatchPlan.for_device(0, on_gpu=True).sizes == (1, 2, 4, 8, 16)
    with pytest.raises(ConfigError, match="max_batch_size|max-batch-size"):
        ServiceConfig(max_batch_size=-1)


def test_plan_run_only_feeds_planned_sizes_and_keeps_order():
    seen = []

    def infer(batch, size):
        seen.append(size)
        assert len(batch) <= size
        return batch.reshape(len(batch), -1)[:, :1].astype(np.float32)

    pixels = np.arange(11, dtype=np.uint8).reshape(11, 1, 1, 1)
    for plan in (BatchPlan.for_device(8, on_gpu=False), BatchPlan.for_device(8, on_gpu=True)):
        seen.clear()
        out = plan.run(infer, pixels)
        assert out[:, 0].tolist() == list(range(11))
        assert set(seen) <= set(plan.sizes)
    assert seen == [8, 4]  # the GPU plan asks for 3 images to be run padded as a batch of 4


def test_batcher_merges_concurrent_requests_and_refuses_when_full():
    gate, batches = threading.Event(), []

    def infer(batch, size):
        gate.wait(5)
        batches.append(len(batch))
        return np.repeat(batch.reshape(len(batch), -1)[:, :1], 2, axis=1).astype(np.float32)

    batcher = MicroBatcher(infer, BatchPlan.for_device(8, on_gpu=False), max_queue_images=6)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(np.full((1, 1, 1, 1), 9, np.uint8)))
        await asyncio.sleep(0.2)  # the inference thread now holds the first job, blocked on the gate
        queued = [asyncio.ensure_future(batcher.submit(np.full((2, 1, 1, 1), i, np.uint8))) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await batcher.submit(np.zeros((1, 1, 1, 1), np.uint8))
        gate.set()
        return await first, await asyncio.gather(*queued)

    try:
        first, rest = asyncio.run(scenario())
    finally:
        batcher.close()
    assert first.probabilities[:, 0].tolist() == [9]
    assert [r.probabilities[:, 0].tolist() for r in rest] == [[0, 0], [1, 1], [2, 2]]
    assert batches[0] == 1 and sum(batches[1:]) == 6 and len(batches) <= 3  # 6 queued images merged


def test_a_request_whose_caller_stopped_waiting_is_dropped_from_the_batch_queue():
    gate, batches = threading.Event(), []

    def infer(batch, size):
        gate.wait(5)
        batches.append(batch.reshape(len(batch), -1)[:, 0].tolist())
        return np.zeros((len(batch), 2), np.float32)

    batcher = MicroBatcher(infer, BatchPlan.for_device(8, on_gpu=False), max_queue_images=8)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(np.full((1, 1, 1, 1), 1, np.uint8)))
        await asyncio.sleep(0.2)  # the inference thread holds the first job, blocked on the gate
        given_up = asyncio.ensure_future(batcher.submit(np.full((2, 1, 1, 1), 2, np.uint8)))
        kept = asyncio.ensure_future(batcher.submit(np.full((1, 1, 1, 1), 3, np.uint8)))
        await asyncio.sleep(0.05)
        assert batcher.queued_images == 3
        given_up.cancel()  # its caller's deadline passed
        await asyncio.sleep(0.05)
        gate.set()
        await first, await kept
        with pytest.raises(asyncio.CancelledError):
            await given_up

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert batches == [[1], [3]] and batcher.queued_images == 0  # the abandoned images never ran


def test_batcher_delivers_inference_failures_to_the_waiting_requests():
    def infer(batch, size):
        raise RuntimeError("boom")

    batcher = MicroBatcher(infer, BatchPlan.for_device(4, on_gpu=False), max_queue_images=8)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            asyncio.run(batcher.submit(np.zeros((1, 1, 1, 1), np.uint8)))
    finally:
        batcher.close()


@pytest.mark.parametrize("text", ["aGVsbG8=", "aGVsbG8", " aGVs\nbG8= ", "data:image/png;base64,aGVsbG8=", "aGVsbG8_"[:7]])
def test_base64_variants(text):
    assert decode_base64(text) == b"hello"


def test_base64_url_safe_alphabet():
    assert decode_base64("-_-_") == bytes([0xFB, 0xFF, 0xBF])


@pytest.mark.parametrize("bad", ["%%%", "a", "aGVsbG8=x="])
def test_bad_base64_is_refused(bad):
    with pytest.raises(ValueError):
        decode_base64(bad)


@pytest.mark.parametrize("raw, value", [(3, 3), ("7", 7), ('"2"', 2), (4.0, 4)])
def test_top_k_accepts_positive_integers(raw, value):
    assert parse_top_k(raw) == value


@pytest.mark.parametrize("raw", ["x", 1.5, True, None, "1e3", [3]])
def test_top_k_refuses_everything_else(raw):
    with pytest.raises(RequestRejected) as caught:
        parse_top_k(raw)
    assert caught.value.reason == "bad_top_k" and caught.value.status == 400


@pytest.mark.parametrize("requested, used", [(None, 5), (3, 3), (50, 10), (1, 1), (10**30, 10)])
def test_top_k_is_defaulted_and_clamped_by_the_engine_only(requested, used):
    assert resolve_top_k(requested, default=5, num_classes=10) == used


@pytest.mark.parametrize("requested", [0, -1, True, "3"])
def test_the_engine_refuses_a_top_k_out_of_range(requested):
    with pytest.raises(BadParameter) as caught:
        resolve_top_k(requested, default=5, num_classes=10)
    assert caught.value.reason == "bad_top_k"


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".", "..", "x" * 200, "a b", "%2e%2e"])
def test_a_model_name_with_path_characters_is_refused(name):
    with pytest.raises(BadParameter) as caught:
        check_model_name(name)
    assert caught.value.reason == "bad_model_name"


def test_config_round_trips_through_the_environment_and_names_bad_values():
    config = ServiceConfig(bundle="/b", workers=2, batch_wait_ms=1.5, access_log=True)
    assert ServiceConfig.from_env(config.to_env()) == config
    with pytest.raises(ConfigError, match="IMGCLS_WORKERS"):
        ServiceConfig.from_env({"IMGCLS_WORKERS": "two"})
    with pytest.raises(ConfigError, match="IMGCLS_DEVICE"):
        ServiceConfig.from_env({"IMGCLS_DEVICE": "tpu"})
    with pytest.raises(ConfigError, match="IMGCLS_MAX_QUEUE_IMAGES"):
        ServiceConfig(max_images=64, max_queue_images=10)


def test_serve_flags_override_the_environment(tmp_path):
    args = build_parser().parse_args([str(tmp_path), "--workers", "3", "--max-batch-size", "8", "--device", "cpu"])
    config = config_from(args, {"IMGCLS_WORKERS": "2", "IMGCLS_MAX_IMAGES": "7"})
    assert (config.workers, config.max_batch_size, config.max_images, config.device) == (3, 8, 7, "cpu")
    assert config.bundle == str(tmp_path.resolve())


def test_serve_refuses_a_missing_or_empty_bundle_before_starting(tmp_path):
    from imgcls.service.host.serve import main

    assert "no such folder" in check_sources(ServiceConfig(bundle=str(tmp_path / "nope")))[0]
    assert "card" in check_sources(ServiceConfig(bundle=str(tmp_path)))[0].lower()
    assert main([str(tmp_path / "nope")]) == 2


def test_a_bundle_folder_whose_name_is_no_model_name_says_what_to_do(tmp_path):
    from tests.factories import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "made")
    odd = bundle.rename(bundle.parent / "my bundle (copy)")
    problem, found = check_sources(ServiceConfig(bundle=str(odd)))
    assert "--model-name" in problem and found == []
    problem, found = check_sources(ServiceConfig(bundle=str(odd), model_name="mine"))
    assert problem is None and [s.name for s in found] == ["mine"]
