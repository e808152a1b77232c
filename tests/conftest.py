"""Shared fixtures: generated images (no binaries committed) and small on-disk artefacts."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """imgcls's cache (verified digests, benchmark figures) in a temporary folder, for every process the
    tests start too: tests never read or write the user's ~/.cache/imgcls."""
    import os

    os.environ["IMGCLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("imgcls-cache"))
    yield


def make_image(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth, structured random image (gradients + blobs), so resizing has something to do."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    channels = []
    for c in range(3):
        fx, fy = rng.uniform(0.5, 4.0, size=2)
        phase = rng.uniform(0, 6.28)
        channels.append(127.5 + 127.5 * np.sin(fx * 6.28 * xs / width + fy * 6.28 * ys / height + phase + c))
    array = np.stack(channels, axis=-1)
    array += rng.normal(0, 12, size=array.shape)
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture
def rgb_png_bytes() -> bytes:
    return encode(make_image(80, 60))


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text (``GET /metrics``) as ``{series with its labels: value}``."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def thread_placement(pid: int) -> dict[int, tuple[str, int, set[int]]]:
    """A process's threads -> (name, nice value, the CPUs it may run on), from /proc (Linux)."""
    placement = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        text, tid = stat.read_text(), int(stat.parent.name)
        fields = text.rsplit(")", 1)[1].split()  # fields[16] is field 19 of stat: nice
        placement[tid] = (text[text.index("(") + 1:text.rindex(")")], int(fields[16]), os.sched_getaffinity(tid))
    return placement
