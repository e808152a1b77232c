import os
import stat

import pytest

from imgcls.models.core.atomic import staged_directory, write_atomically


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_published_directory_is_readable_by_other_users(tmp_path):
    target = tmp_path / "bundle"
    with staged_directory(target) as staging:
        write_atomically(staging / "card.json", b"{}")
        (staging / "model.onnx").write_bytes(b"x")
    assert mode(target) == 0o755
    assert mode(target / "card.json") == 0o644
    assert mode(target / "model.onnx") == 0o644


def test_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "bundle"
    with staged_directory(target) as staging:
        (staging / "a").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "a").write_bytes(b"new")
            raise RuntimeError("crash mid-way")
    assert (target / "a").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
