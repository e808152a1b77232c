"""Predictor parts that need no bundle: softmax, top-k, CPU budget from affinity and cgroups."""
from __future__ import annotations

import os

import numpy as np
import pytest

from imgcls.service.predictor import softmax, top_k_indices
from imgcls.service.runtime import RuntimeConfig, available_cpus, cgroup_cpu_limit, threads_per_worker


def test_softmax_is_stable_and_normalised():
    logits = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0], [-5e4, -5e4 + 1, -5e4 + 2]], np.float32)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float32
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    e = np.exp([0.0, -1.0])
    np.testing.assert_allclose(probabilities[0, :2], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(probabilities[1], [1 / 3] * 3, rtol=1e-6)
    assert probabilities[2].argmax() == 2


def test_top_k_is_sorted_clamped_and_breaks_ties_by_index():
    row = np.array([0.1, 0.4, 0.1, 0.4], np.float32)
    assert top_k_indices(row, 2).tolist() == [1, 3]
    assert top_k_indices(row, 99).tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="top_k"):
        top_k_indices(row, 0)


def _tree(tmp_path, files: dict[str, str]):
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_quota_takes_the_tightest_ancestor(tmp_path):
    _tree(tmp_path, {
        "fs/cgroup.controllers": "cpu memory",
        "fs/a/cpu.max": "150000 100000",
        "fs/a/b/cpu.max": "max 100000",
        "proc": "0::/a/b\n",
    })
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") == pytest.approx(1.5)


def test_cgroup_v2_in_a_container_reads_the_root(tmp_path):
    _tree(tmp_path, {"fs/cgroup.controllers": "cpu", "fs/cpu.max": "200000 100000", "proc": "0::/\n"})
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") == pytest.approx(2.0)


def test_cgroup_v2_without_quota_is_unlimited(tmp_path):
    _tree(tmp_path, {"fs/cgroup.controllers": "cpu", "fs/cpu.max": "max 100000", "proc": "0::/\n"})
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") is None


def test_cgroup_v1_quota_with_host_path_missing_in_container(tmp_path):
    _tree(tmp_path, {
        "fs/cpu,cpuacct/cpu.cfs_quota_us": "300000",
        "fs/cpu,cpuacct/cpu.cfs_period_us": "100000",
        "proc": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
    })
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") == pytest.approx(3.0)


def test_cgroup_v1_unlimited(tmp_path):
    _tree(tmp_path, {
        "fs/cpu/cpu.cfs_quota_us": "-1", "fs/cpu/cpu.cfs_period_us": "100000", "proc": "3:cpu:/\n",
    })
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc") is None


def test_threads_are_divided_among_workers():
    assert threads_per_worker(1, cpus=1.5) == 1
    assert threads_per_worker(2, cpus=8) == 4
    assert threads_per_worker(3, cpus=2) == 1
    assert threads_per_worker(1, cpus=4.0) == 4
    with pytest.raises(ValueError):
        threads_per_worker(0, cpus=4)


def test_available_cpus_respects_affinity():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert RuntimeConfig(workers=1).intra_op_threads() == threads_per_worker(1)
    assert RuntimeConfig(threads=3).intra_op_threads() == 3


def test_runtime_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="device"):
        RuntimeConfig(device="tpu")
    with pytest.raises(ValueError, match="cudnn"):
        RuntimeConfig(cudnn_conv_algo_search="FAST")
    options = RuntimeConfig(device="cuda", gpu_mem_limit_bytes=2 << 30).cuda_options()
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["gpu_mem_limit"] == str(2 << 30)
