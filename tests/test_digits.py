"""``imgcls digits``: the bundled scikit-learn digits as an ImageFolder, readable by load_image."""
from __future__ import annotations

from imgcls.digits import main, write_digits
from imgcls.models.core.preprocess import load_image


def test_writes_limited_image_folder(tmp_path):
    counts = write_digits(tmp_path / "digits", limit_per_class=3, size=24)
    assert counts == {str(d): 3 for d in range(10)}
    files = sorted((tmp_path / "digits" / "7").glob("*.png"))
    assert len(files) == 3
    image = load_image(files[0])
    assert image.mode == "RGB" and image.size == (24, 24)
    assert max(image.getextrema()[0]) > 100  # real strokes, not a blank image


def test_cli_writes_and_refuses_bad_limit(tmp_path, caplog):
    assert main([str(tmp_path / "d"), "--limit-per-class", "2"]) == 0
    assert sum(1 for _ in (tmp_path / "d").rglob("*.png")) == 20
    assert main([str(tmp_path / "e"), "--limit-per-class", "0"]) == 2
    assert "limit_per_class must be at least 1" in caplog.text
