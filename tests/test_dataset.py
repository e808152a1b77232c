"""Split listings: deterministic stratified splits, folder splits, and bad layouts with messages."""
from __future__ import annotations

import pytest

from imgcls.models.core.dataset import DatasetError, SplitListing, make_split, without_files
from tests.factories import make_image_folder


def test_stratified_split_is_deterministic_and_round_trips(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=10)
    first, second = make_split(root, 0.2, seed=3), make_split(root, 0.2, seed=3)
    assert first == second and first.class_names == ("cat", "dog", "owl")
    assert [sum(s.label == i for s in first.val) for i in range(3)] == [2, 2, 2]
    assert make_split(root, 0.2, seed=4).sha256() != first.sha256()
    assert not {s.path for s in first.train} & {s.path for s in first.val}
    first.save(tmp_path)
    assert SplitListing.load(tmp_path) == first and SplitListing.load(tmp_path).sha256() == first.sha256()


def test_train_val_folders_are_used_as_given(tmp_path):
    make_image_folder(tmp_path / "data" / "train", per_class=4)
    make_image_folder(tmp_path / "data" / "val", per_class=2, seed=1)
    listing = make_split(tmp_path / "data")
    assert listing.method == "folders" and len(listing.train) == 12 and len(listing.val) == 6


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "is not a directory"),
        ("empty", "has no class folders"),
        ("loose", "found 2 images directly inside it"),
        ("single", "only one class (cat)"),
        ("empty_class", "class folder(s) with no images: owl"),
    ],
)
def test_bad_layouts_say_what_to_fix(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "loose":
        make_image_folder(tmp_path / "src", classes=("cat",), per_class=2)
        for path in (tmp_path / "src" / "cat").iterdir():
            path.rename(root / path.name)
    if layout in ("single", "empty_class"):
        make_image_folder(root, classes=("cat",) if layout == "single" else ("cat", "dog"), per_class=3)
    if layout == "empty_class":
        (root / "owl").mkdir()
    with pytest.raises(DatasetError) as info:
        make_split(root)
    assert message in str(info.value)


def test_without_files_refuses_to_empty_a_class(tmp_path):
    listing = make_split(make_image_folder(tmp_path / "data", per_class=4), 0.25, seed=0)
    dropped = without_files(listing, {listing.train[0].path})
    assert len(dropped.train) == len(listing.train) - 1 and dropped.val == listing.val
    owl_val = {s.path for s in listing.val if s.label == 2}
    with pytest.raises(DatasetError, match="owl have no readable validation images"):
        without_files(listing, owl_val)
