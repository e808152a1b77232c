"""A verified file's digest is remembered per file version: a rewritten file is hashed again."""
from __future__ import annotations

import os

import pytest

from imgcls.models.core import verified
from imgcls.models.core.atomic import sha256_file


@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(verified, "_MEMO", {})
    calls = []

    def counting(path, *args, **kw):
        calls.append(str(path))
        return sha256_file(path, *args, **kw)

    monkeypatch.setattr(verified, "sha256_file", counting)
    return calls


def test_second_lookup_hashes_nothing_even_in_a_new_process(counted, tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"x" * 4096)
    first = verified.cached_sha256(target)
    monkeypatch.setattr(verified, "_MEMO", {})  # as a fresh process would start: only the file cache
    assert verified.cached_sha256(target) == first == sha256_file(target)
    assert counted == [str(target)]
    assert (tmp_path / "cache" / verified.CACHE_FILENAME).is_file()


def test_rewritten_file_with_the_same_size_and_mtime_is_hashed_again(counted, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"a" * 4096)
    before = os.stat(target)
    original = verified.cached_sha256(target)
    with open(target, "r+b") as handle:  # same inode, same size...
        handle.write(b"b")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and the old mtime put back
    changed = verified.cached_sha256(target)
    assert changed != original and changed == sha256_file(target)
    assert len(counted) == 2


def test_unwritable_cache_only_costs_a_hash(counted, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(blocked / "sub"))
    target = tmp_path / "m.onnx"
    target.write_bytes(b"z" * 100)
    assert verified.cached_sha256(target) == sha256_file(target)
