"""``imgcls train --strategy head`` caches the backbone features with ONNX Runtime on the backbone
converted as the bundle is: the cached features are those the exported bundle's own graph computes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

from imgcls.digits import write_digits
from imgcls.export.config import DEFAULT_OPSET
from imgcls.export.head_refit import find_head
from imgcls.export.images import load_pixels
from imgcls.export.validate import run_batches, session
from imgcls.models.core.dataset import SplitListing
from imgcls.models.training.onnx_graph import BUNDLE_OPSET
from tests.conftest import REPO_ROOT
from tests.train_helpers import cli_env

pytestmark = pytest.mark.slow

HEAD = ["--arch", "mobilenet_v3_small", "--weights", "none", "--strategy", "head", "--epochs", "1",
        "--batch-size", "8", "--loader-workers", "0", "--threads", "1", "--no-augment", "--patience", "0"]


def _imgcls(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *args], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def _cached(run, part: str) -> np.ndarray:
    pieces = sorted((run / "feature_cache").glob(f"{part}-*.safetensors"))
    assert pieces, f"no {part} pieces in {run / 'feature_cache'}"
    return np.concatenate([load_file(str(p))["features"] for p in pieces])


def test_cached_features_are_the_exported_bundles_backbone_output(tmp_path):
    assert BUNDLE_OPSET == DEFAULT_OPSET, "features are cached from the graph the bundle will contain"
    data, run, bundle = tmp_path / "digits", tmp_path / "run", tmp_path / "bundle"
    write_digits(data, limit_per_class=8)
    trained = _imgcls("train", "--data", str(data), "--out", str(run), *HEAD)
    assert trained.returncode == 0, trained.stderr[-2000:]
    stats = json.loads((run / "feature_cache" / "stats.json").read_text())
    assert stats["engine"].startswith("onnxruntime ") and stats["computed"] == stats["images"] > 0
    assert "with onnxruntime" in trained.stderr
    exported = _imgcls("export", str(run), "--out", str(bundle), "--no-progress")
    assert exported.returncode == 0, exported.stderr[-2000:]

    model = onnx.load(str(bundle / "model.onnx"))
    head = find_head(model)
    assert head is not None
    model.graph.output.append(onnx.helper.make_tensor_value_info(head.features, onnx.TensorProto.FLOAT, None))
    split = SplitListing.load(run)
    from imgcls.models.core.card import ModelCard

    val = load_pixels(split, split.val, ModelCard.load(bundle).preprocess)
    assert len(val.labels) == len(split.val)
    bundle_features = run_batches(session(model.SerializeToString()), val.pixels, 8, head.features)
    cached = _cached(run, "val")
    assert cached.shape == bundle_features.reshape(len(val.labels), -1).shape
    np.testing.assert_allclose(cached, bundle_features.reshape(cached.shape), rtol=1e-4, atol=1e-4)
