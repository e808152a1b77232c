"""The ladder's head rung: the classifier retrained on the INT8 backbone's own training features."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from imgcls.models.core.cpu import local_target
from imgcls.export.head_refit import (ENGINES, FAITHFUL_RELATIVE_DIFF, HeadRecipe, find_head, head_samples, head_weights,
                                      int8_features, refit, write_head)
from imgcls.export.validate import session
from imgcls.export.images import load_pixels
from imgcls.export.quantize import calibration_pixels, prepare, quantize_prepared, recipe_for
from imgcls.models.core.card import ModelCard
from imgcls.models.core.dataset import SplitListing
from tests.factories import make_tiny_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A fitted tiny bundle, its prepared graph, and an INT8 file with the classifier left float."""
    work = tmp_path_factory.mktemp("head")
    bundle = make_tiny_bundle(work, classes=("cat", "dog", "owl", "fox"), per_class=12, train_steps=40)
    card = ModelCard.load(bundle)
    run = work / "runs" / card.arch
    split = SplitListing.load(run)
    prepared = work / "prepared.onnx"
    prepare(bundle / "model.onnx", prepared)
    head = find_head(onnx.load(str(prepared)))
    assert head is not None, "the tiny net ends in a Gemm"
    recipe = recipe_for(local_target(), card.arch).excluding((head.name,))
    path = work / "backbone.onnx"
    quantize_prepared(prepared, path, recipe, calibration_pixels(split, card, 16))
    return card, split, prepared, head, path


def test_the_classifier_is_found_and_left_float(backbone):
    _, _, prepared, head, path = backbone
    model = onnx.load(str(path))
    gemm = next(n for n in model.graph.node if n.name == head.name)
    assert gemm.op_type == "Gemm" and gemm.input[1] == head.weight, "the classifier's weight stays an fp32 initializer"
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node), "the backbone is quantized"
    weight, bias = head_weights(onnx.load(str(prepared)), head)
    assert weight.shape == (4, weight.shape[1]) and bias.shape == (4,)


def test_a_graph_not_ending_in_a_gemm_has_no_head_rung():
    x = onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 2])
    weight = onnx.numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["pixels", "w"], ["logits"])], "g", [x], [y],
                                   [weight])
    assert find_head(onnx.helper.make_model(graph)) is None


def test_refit_fits_the_int8_features_and_is_written_where_ort_runs_it(backbone, tmp_path):
    card, split, prepared, head, path = backbone
    samples = head_samples(split, 10_000)
    features, labels, engine = int8_features(path, head, split, samples, card)
    assert features.shape[0] == len(samples) == len(labels)
    # the engine is chosen by measurement: both timed, the float simulation measured against the integer kernels
    closeness = engine["qdq_in_float_vs_integer_kernels"]
    assert set(engine["images_per_s"]) == set(ENGINES) and engine["engine"] in ENGINES
    assert closeness["faithful"] == (closeness["relative_l2_diff"] <= FAITHFUL_RELATIVE_DIFF)
    if not closeness["faithful"]:
        assert engine["engine"] == "integer kernels"
    weight, bias = head_weights(onnx.load(str(prepared)), head)
    # a head whose class rows are shifted by one misplaces every class: the refit must learn them back
    weight, bias = np.roll(weight, 1, axis=0), np.roll(bias, 1)
    recipe = HeadRecipe(epochs=30, lr=0.05)
    new_weight, new_bias, figures = refit(weight, bias, features, labels, recipe)
    again = refit(weight, bias, features, labels, recipe)
    assert np.array_equal(new_weight, again[0]) and np.array_equal(new_bias, again[1]), "deterministic for a seed"
    old_loss = torch.nn.functional.cross_entropy(torch.from_numpy(features @ weight.T + bias), torch.from_numpy(labels))
    assert figures["train_loss_after"] < float(old_loss), "the retrained head fits the INT8 features better"
    assert figures["train_top1_before"] < 0.5 < 0.9 <= figures["train_top1_after"], figures

    written = tmp_path / "head.onnx"
    write_head(path, written, head, new_weight, new_bias)
    pixels = load_pixels(split, samples[:8], card.preprocess).pixels
    same_engine = session(written, config_entries=ENGINES[engine["engine"]])
    logits = same_engine.run(["logits"], {"pixels": pixels})[0]
    np.testing.assert_allclose(logits, features[:8] @ new_weight.T + new_bias, rtol=1e-4, atol=1e-4)


def test_the_recipe_is_the_runs_own():
    card = ModelCard(arch="tiny", base_weights="none", class_names=("a", "b"), preprocess=None,  # type: ignore[arg-type]
                     train={"lr": 0.003, "epochs": 7, "batch_size": 64, "optimizer": "sgd", "label_smoothing": 0.0})
    recipe = HeadRecipe.from_card(card)
    assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.label_smoothing) == (0.003, 7, 64, "sgd", 0.0)
    assert recipe.weight_decay == HeadRecipe().weight_decay, "missing settings fall back to the head strategy's"
    assert head_samples(SplitListing("/x", ("a",), tuple(range(10)), (), "seeded", 0, 0.2), 4) == [0, 3, 6, 9]  # type: ignore[arg-type]
