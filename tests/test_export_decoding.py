"""Export decodes its images in threads, ahead of the inference that uses them (``pixel_chunks``), with
the same pixels, order and skipping of unreadable files as one-at-a-time decoding; the INT8 head refit
runs on one torch thread whatever the caller's setting, so its result does not depend on it."""
from __future__ import annotations

import logging

import numpy as np
import torch

from imgcls.export.head_refit import HeadRecipe, refit
from imgcls.export.images import load_pixels, pixel_chunks
from imgcls.models.core.dataset import make_split
from imgcls.models.zoo.registry import default_preprocess
from tests.factories import make_image_folder


def _split(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    return make_split(data, val_fraction=0.25, seed=0)


def test_chunks_keep_order_and_skip_unreadable_files_with_a_warning(tmp_path, caplog):
    split, preprocess = _split(tmp_path), default_preprocess("tiny")
    samples = list(split.train)
    broken = samples[3]
    split.absolute(broken).write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        chunks = list(pixel_chunks(split, samples, preprocess, chunk=4))
    assert [len(c.labels) for c in chunks][:1] == [3], "the chunk holding the broken file is one short"
    readable = [s for s in samples if s != broken]
    assert [p for c in chunks for p in c.paths] == [s.path for s in readable]
    expected = np.stack([preprocess.pixels(preprocess.load(split.absolute(s))) for s in readable])
    assert np.array_equal(np.concatenate([c.pixels for c in chunks]), expected)
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), [s.label for s in readable])
    assert broken.path in caplog.text

    limited = load_pixels(split, samples, preprocess, limit=5)
    assert limited.paths == tuple(s.path for s in readable[:5]) and np.array_equal(limited.pixels, expected[:5])
    assert load_pixels(split, samples, preprocess).paths == tuple(s.path for s in readable)


def test_refit_does_not_depend_on_the_callers_torch_threads():
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(300, 256)), 0).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    weight, bias = rng.normal(scale=0.05, size=(5, 256)).astype(np.float32), np.zeros(5, np.float32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(refit(weight, bias, features, labels, HeadRecipe(epochs=3)))
            assert torch.get_num_threads() == threads, "the caller's setting is restored"
    finally:
        torch.set_num_threads(before)
    (w1, b1, f1), (w2, b2, f2) = results
    assert np.array_equal(w1, w2) and np.array_equal(b1, b2) and f1 == f2


def test_export_sessions_do_not_busy_wait_as_serving_does(tmp_path):
    """The gate times sessions configured as serving's (no spinning threads stealing decode cores)."""
    import onnx
    from onnx import TensorProto, helper

    from imgcls.export.validate import session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    options = session(model.SerializeToString()).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    overridden = session(model.SerializeToString(), config_entries={"session.intra_op.allow_spinning": "1"})
    assert overridden.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
