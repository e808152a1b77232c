"""The engine's registry without HTTP: a request holds the version it started on through a swap, the
replaced version closes only after it, a refused bundle leaves the served one, names are checked once."""
from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from imgcls.service.engine.registry import ModelRegistry
from imgcls.service.engine.settings import EngineSettings
from imgcls.service.engine.sources import ModelSource
from imgcls.service.engine.types import (
    BadParameter, ClassifyRequest, LoadRefused, ModelRequired, UnknownModel, Upload,
)
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle


class Series:
    """Stands in for the host's prometheus objects: the engine only labels, counts and observes."""

    def labels(self, **_: str) -> "Series":
        return self

    def inc(self, *_: float) -> None: ...

    def observe(self, *_: float) -> None: ...

    def set(self, *_: float) -> None: ...


class Metrics:
    def __getattr__(self, name: str) -> Series:
        return Series()

    def set_model(self, **_: object) -> None: ...


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return [make_tiny_bundle(root / f"s{seed}", seed=seed) for seed in (0, 1)]


def request(model: str | None = None) -> ClassifyRequest:
    return ClassifyRequest((Upload(0, "a.png", encode(make_image(64, 48, seed=1))),), model=model)


def test_a_running_request_finishes_on_the_version_it_started_on(bundles):
    registry = ModelRegistry(EngineSettings(workers=1), Metrics())
    old_info = registry.load(ModelSource("m", bundles[0]))

    async def scenario() -> tuple[str, str]:
        async with registry.use("m") as held:
            new_info = await asyncio.get_running_loop().run_in_executor(None, registry.load, ModelSource("m", bundles[1]))
            assert registry.resolve("m").info == new_info  # new requests get the new version at once
            time.sleep(0.3)
            # the old version still answers (a closed batcher would refuse: "the server is shutting down")
            finished = (await held.classify(request())).model.version
        return finished, new_info.version

    finished, new_version = asyncio.run(scenario())
    assert finished == old_info.version != new_version
    registry.close()


def test_a_refused_bundle_leaves_the_served_version(bundles, tmp_path):
    registry = ModelRegistry(EngineSettings(workers=1), Metrics())
    served = registry.load(ModelSource("m", bundles[0]))
    broken = tmp_path / "broken"
    shutil.copytree(bundles[1], broken)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(LoadRefused):
        registry.load(ModelSource("m", broken))
    assert registry.resolve("m").info == served
    assert [(e.name, e.state) for e in registry.index()] == [("m", "READY")]
    registry.close()


def test_model_names_are_defaulted_and_checked_in_one_place(bundles):
    registry = ModelRegistry(EngineSettings(workers=1), Metrics())
    registry.load(ModelSource("a", bundles[0]))
    assert registry.resolve(None).name == "a"  # one model: the name may be left out
    registry.load(ModelSource("b", bundles[1]))
    with pytest.raises(ModelRequired, match="a, b"):
        registry.resolve(None)
    with pytest.raises(UnknownModel, match="'c'"):
        registry.resolve("c")
    with pytest.raises(BadParameter):
        registry.resolve("../a")
    registry.unload("a")
    assert registry.resolve(None).name == "b"
    registry.close()
