"""Strategies: ``head`` freezes the backbone completely (weights and BatchNorm statistics), the
feature extractor behind the cached path is the model minus its head for every kind of backbone,
and inception_v3's auxiliary logits are trained in training mode."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from imgcls.models.training.feature_cache import feature_extractor, main_head
from imgcls.models.training.strategies import Freezer, backbone_trainable
from imgcls.models.training.cli import main
from imgcls.models.training.config import TrainConfig
from imgcls.models.training.loop import EpochContext, _train_step, make_optimizer, make_scheduler
from imgcls.models.zoo.registry import build, create, head_parameter_names
from tests.factories import make_image_folder


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """A tiny model whose BatchNorm statistics are far from their defaults, saved as a weights file."""
    torch.manual_seed(1)
    model = create("tiny", 1000, weights="none").train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 3 + 1)
    path = tmp_path_factory.mktemp("weights") / "start.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("cache", ["--cached-features", "--no-cached-features"])
def test_head_leaves_every_backbone_tensor_unchanged(tmp_path, start_weights, cache):
    torch.set_num_threads(1)
    data = make_image_folder(tmp_path / "data", per_class=8, size=(36, 36))
    out = tmp_path / "run"
    assert main(["--data", str(data), "--out", str(out), "--arch", "tiny", "--weights", str(start_weights),
                 "--strategy", "head", "--epochs", "2", "--loader-workers", "0", cache]) == 0
    start, trained = load_file(str(start_weights)), load_file(str(out / "checkpoint" / "weights.safetensors"))
    backbone = [k for k in trained if not k.startswith("head.")]
    assert any("running_var" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    changed = [k for k in backbone if not torch.equal(trained[k], start[k])]
    assert changed == []
    assert trained["head.weight"].shape == (3, 16)
    torch.manual_seed(0)  # the run's seed: the same freshly initialised head it started from
    assert not torch.equal(trained["head.weight"], create("tiny", 3, weights=str(start_weights)).head.weight)


def test_freezer_keeps_frozen_batchnorm_in_eval_after_train():
    model = build("tiny", 3)
    freezer = Freezer(model, "tiny")
    freezer.set_backbone_frozen(True)
    freezer.train_mode()
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    assert model.head.training and model.training
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head."))
    freezer.set_backbone_frozen(False)
    freezer.train_mode()
    assert all(m.training for m in batchnorms) and all(p.requires_grad for p in model.parameters())
    assert [backbone_trainable("gradual", e, 2) for e in range(4)] == [False, False, True, True]
    assert not backbone_trainable("head", 5, 0) and backbone_trainable("finetune", 0, 0)


@pytest.mark.parametrize("arch, size", [("tiny", 32), ("mobilenet_v3_small", 64), ("efficientnet_lite0", 64),
                                        ("inception_v3", 96), ("vit_b_16", 224)])
def test_feature_extractor_is_the_model_without_its_head(arch, size):
    torch.manual_seed(0)
    model = build(arch, 5).eval()
    extractor = feature_extractor(model, arch)
    x = torch.randn(1 if size > 64 else 2, 3, size, size)
    with torch.no_grad():
        features = extractor(x)
        assert features.shape == (x.shape[0], main_head(model, arch).in_features)
        torch.testing.assert_close(main_head(model, arch)(features), model(x), rtol=1e-4, atol=1e-4)
    assert all(isinstance(model.get_submodule(h), nn.Linear) for h in head_parameter_names(arch))


def test_inception_trains_its_aux_head_in_training_mode():
    """``head`` without a cache on inception_v3: training mode yields (logits, aux); both heads learn,
    the frozen backbone (in eval) does not move."""
    torch.manual_seed(0)
    model = build("inception_v3", 3)
    config = TrainConfig(data=".", arch="inception_v3", strategy="head", epochs=1, lr=1e-3)
    freezer = Freezer(model, "inception_v3")
    freezer.set_backbone_frozen(True)
    optimizer = make_optimizer(config, model, "inception_v3", head_only=True)
    ctx = EpochContext(model, optimizer, make_scheduler(optimizer, config, 1), nn.CrossEntropyLoss(),
                       torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), 1.0, False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freezer.train_mode()
    assert model.training and model.AuxLogits.training and not model.AuxLogits.conv0.bn.training
    loss_sum, _ = _train_step(ctx, torch.randn(2, 3, 299, 299), torch.tensor([0, 2]))
    assert loss_sum > 0
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"}


def test_optimizer_choices_schedule_and_class_weights():
    from imgcls.models.training.loop import class_weight_tensor, warmup_cosine

    model = build("tiny", 3)
    sgd = make_optimizer(TrainConfig(data=".", arch="tiny", strategy="finetune", optimizer="sgd", lr=0.1,
                                     backbone_lr_mult=0.25), model, "tiny", head_only=False)
    assert isinstance(sgd, torch.optim.SGD) and [g["lr"] for g in sgd.param_groups] == [0.1, 0.025]
    head_only = make_optimizer(TrainConfig(data=".", arch="tiny"), model, "tiny", head_only=True)
    assert [g["name"] for g in head_only.param_groups] == ["head"] and len(head_only.param_groups[0]["params"]) == 2
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 3) for s in (0, 1, 2, 7, 10)] == [0.5, 1.0, 1.0, 0.309, 0.0]  # 0.5 * (1 + cos(pi * 5/8)) at step 7
    weights = class_weight_tensor(torch.tensor([0, 0, 0, 1]), 3)  # class 2 absent
    assert weights[2] == 0 and weights[1] == pytest.approx(3 * weights[0]) and weights[:2].mean() == pytest.approx(1)
