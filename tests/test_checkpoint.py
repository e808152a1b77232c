import json

import pytest
import torch

from imgcls.models.core.card import ModelCard
from imgcls.models.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from imgcls.models.zoo.registry import create, default_preprocess


def tiny_card(classes=("a", "b", "c")) -> ModelCard:
    return ModelCard(arch="tiny", base_weights="none", class_names=tuple(classes), preprocess=default_preprocess("tiny"))


def test_round_trip_from_disk(tmp_path):
    torch.manual_seed(0)
    model = create("tiny", 3, weights="none").eval()
    card = save_checkpoint(tmp_path / "run" / "checkpoint", model, tiny_card())
    assert len(card.lineage["weights_sha256"]) == 64
    loaded, loaded_card = load_checkpoint(tmp_path / "run")  # a run directory works too
    assert loaded_card == card
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no staging left


def test_overwrite_replaces_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(target, create("tiny", 3, weights="none"), tiny_card())
    (target / "stale.txt").write_text("x")
    save_checkpoint(target, create("tiny", 3, weights="none"), tiny_card())
    assert sorted(p.name for p in target.iterdir()) == ["card.json", "weights.safetensors"]


def test_class_count_mismatch_is_named(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(target, create("tiny", 3, weights="none"), tiny_card())
    data = json.loads((target / "card.json").read_text())
    data["class_names"] = ["a", "b", "c", "d"]
    (target / "card.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="head has 3 outputs but card.class_names lists 4"):
        load_checkpoint(target)


def test_arch_mismatch_is_named(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(target, create("tiny", 3, weights="none"), tiny_card())
    data = json.loads((target / "card.json").read_text())
    data["arch"] = "resnet18"
    (target / "card.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="do not fit card.arch='resnet18'"):
        load_checkpoint(target)


def test_replaced_weights_are_detected(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    save_checkpoint(first, create("tiny", 3, weights="none"), tiny_card())
    torch.manual_seed(1)
    save_checkpoint(second, create("tiny", 3, weights="none"), tiny_card())
    (first / "weights.safetensors").write_bytes((second / "weights.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(first)


def test_missing_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    target = tmp_path / "ckpt"
    save_checkpoint(target, create("tiny", 3, weights="none"), tiny_card())
    (target / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(target)
