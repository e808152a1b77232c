import json

import pytest

from imgcls.models.core.card import CardError, FORMAT_VERSION, METADATA_KEY, ModelCard
from imgcls.models.core.preprocess import Preprocess


def card(**overrides) -> ModelCard:
    fields = dict(
        arch="tiny",
        base_weights="none",
        class_names=("zebra", "apple", "mango"),
        preprocess=Preprocess(36, 32),
        train={"epochs": 2},
    )
    fields.update(overrides)
    return ModelCard(**fields)


def test_round_trip_keeps_class_order(tmp_path):
    original = card()
    path = original.save(tmp_path)
    assert path.name == "card.json"
    loaded = ModelCard.load(tmp_path)
    assert loaded == original
    assert loaded.class_names == ("zebra", "apple", "mango")  # stored order, never re-sorted
    assert loaded.num_classes == 3


def test_metadata_props_round_trip():
    original = card(export={"opset": 18})
    props = original.to_metadata_props()
    assert set(props) >= {METADATA_KEY}
    assert all(isinstance(v, str) for v in props.values())
    assert ModelCard.from_metadata_props(props) == original


def test_metadata_without_card_is_refused():
    with pytest.raises(CardError, match="not an imgcls export"):
        ModelCard.from_metadata_props({"producer": "someone"})


def test_updated_merges_mappings():
    updated = card().updated(train={"lr": 0.1}, metrics={"val_acc": 0.5})
    assert updated.train == {"epochs": 2, "lr": 0.1}
    assert updated.metrics == {"val_acc": 0.5}


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.pop("format_version"), "format_version"),
        (lambda d: d.pop("arch"), "card.arch"),
        (lambda d: d.update(class_names="abc"), "card.class_names"),
        (lambda d: d.update(class_names=["a", 3]), "card.class_names"),
        (lambda d: d.update(class_names=["a", "a"]), "card.class_names"),
        (lambda d: d.update(class_names=["only"]), "card.class_names"),
        (lambda d: d["preprocess"].pop("crop_size"), "card.preprocess"),
        (lambda d: d["preprocess"].update(interpolation="fancy"), "card.preprocess"),
        (lambda d: d["preprocess"].update(crop_size=999), "card.preprocess"),
        (lambda d: d.update(metrics=[1, 2]), "card.metrics"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_malformed_card_names_the_field(tmp_path, mutate, field):
    data = card().to_dict()
    mutate(data)
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(CardError) as info:
        ModelCard.load(tmp_path)
    assert field in str(info.value)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.load(tmp_path)
    with pytest.raises(CardError, match="does not exist"):
        ModelCard.load(tmp_path / "elsewhere")


def test_format_version_is_current():
    assert card().to_dict()["format_version"] == FORMAT_VERSION
