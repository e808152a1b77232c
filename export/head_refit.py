"""The ladder's head rung: the INT8 backbone with its classifier retrained on the INT8 features.

Post-training quantization moves the backbone's features a little; the classifier, fitted to the
fp32 features, then misplaces some of its decision boundaries. This rung quantizes every node but
the final Gemm (the classifier stays fp32: a few kilobytes), computes the *INT8 model's own*
features of the run's training images with ONNX Runtime's integer kernels (exactly what will run),
and retrains the classifier on them from its fp32 weights with the run's own head recipe (optimiser,
learning rate, weight decay, batch size, epochs, label smoothing, gradient clipping from the card's
``train`` section). It is quantization-aware training restricted to the last layer, with real
kernels instead of fake quantization; the validation split is never seen, so the gate stays honest,
and with fewer than ``MIN_FIT_IMAGES`` training images the rung is skipped.

Measured (efficientnet_lite0, ImageNet weights, head fine-tuned on the digits, 359 validation
images, fp32 97.2 %, AVX-512 VNNI AMD EPYC): plain PTQ 94.4 %, the same backbone with its head
retrained 96.9-97.2 % over three seeds.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from imgcls.export.config import OUTPUT_NAME
from imgcls.export.images import pixel_chunks
from imgcls.export.validate import run_batches, session
from imgcls.models.core.card import ModelCard
from imgcls.models.core.progress import track
from imgcls.models.core.dataset import Sample, SplitListing

log = logging.getLogger(__name__)

FEATURE_BATCH = 16
LOAD_CHUNK = 128  # images decoded at a time (bounded memory on large splits)
# The fewest images the head is retrained on, apart from the gate's. A classifier has classes x
# features weights: on a few dozen images the refit memorises them (train top-1 100 %) rather than
# learning how INT8 moved the features, and whatever it gains is then measured on the few images
# left for the gate, where one image is several points. Below this the rung is skipped.
MIN_FIT_IMAGES = 100


@dataclass(frozen=True)
class HeadNode:
    """The graph's classifier: ``logits = Gemm(features, weight, bias)``."""

    name: str
    features: str
    weight: str
    bias: str
    trans_b: bool


@dataclass(frozen=True)
class HeadRecipe:
    """How the head is retrained (defaults: the training CLI's head strategy)."""

    optimizer: str = "adamw"
    lr: float = 1e-2
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 15
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    @classmethod
    def from_card(cls, card: ModelCard) -> "HeadRecipe":
        """The run's own settings (``card.train``); the head's learning rate is the run's ``lr``."""
        train: Mapping[str, Any] = card.train or {}
        defaults = asdict(cls())
        values = {key: type(default)(train[key]) if train.get(key) is not None else default
                  for key, default in defaults.items()}
        values["optimizer"] = values["optimizer"] if values["optimizer"] in ("adamw", "sgd") else "adamw"
        return cls(**values)


def find_head(model: onnx.ModelProto) -> HeadNode | None:
    """The Gemm producing the graph's logits with initializer weight and bias, else None."""
    initializers = {init.name for init in model.graph.initializer}
    producer = next((node for node in model.graph.node if OUTPUT_NAME in node.output), None)
    if producer is None or producer.op_type != "Gemm" or len(producer.input) < 3:
        return None
    _, weight, bias = producer.input[:3]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in producer.attribute}
    if weight not in initializers or bias not in initializers or attrs.get("transA", 0):
        return None
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    return HeadNode(producer.name, producer.input[0], weight, bias, bool(attrs.get("transB", 0)))


def head_weights(model: onnx.ModelProto, head: HeadNode) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [classes, features], bias [classes])`` as float32."""
    inits = {init.name: init for init in model.graph.initializer}
    weight = numpy_helper.to_array(inits[head.weight]).astype(np.float32)
    bias = numpy_helper.to_array(inits[head.bias]).astype(np.float32)
    return (weight if head.trans_b else weight.T), bias


# Two ways to compute the INT8 backbone's features: ORT's integer kernels (what serving runs), or the
# same QDQ graph with its quantize/dequantize pairs kept as float ops (``session.disable_quant_qdq``:
# float convolutions on the quantized weights and activations; the rounding of the integer kernels'
# requantization is the only difference). The faster on this machine computes them, provided its
# features stay within FAITHFUL_RELATIVE_DIFF of the integer kernels' on the probe images.
ENGINES = {"integer kernels": {}, "QDQ in float": {"session.disable_quant_qdq": "1"}}
# One batch: the engines' speeds differ several times over (efficientnet_lite0 U8S8 on a VNNI EPYC:
# integer kernels 77-126 images/s, QDQ in float 24-29), and the closeness is measured on 16 x 1280 values.
PROBE_IMAGES = FEATURE_BATCH
FAITHFUL_RELATIVE_DIFF = 0.02


def _timed(sess: Any, pixels: np.ndarray, output: str) -> tuple[np.ndarray, float]:
    """(features of ``pixels``, images/s): one image warms the session up (first-run costs), then
    ``pixels`` are run in ``FEATURE_BATCH`` batches, timed."""
    run_batches(sess, pixels[:1], 1, output)
    started = time.perf_counter()
    features = run_batches(sess, pixels, FEATURE_BATCH, output)
    return features.reshape(len(pixels), -1), len(pixels) / max(time.perf_counter() - started, 1e-9)


def choose_engine(model: bytes, output: str, probe: np.ndarray) -> tuple[Any, dict[str, Any], np.ndarray]:
    """(the session to compute features with, what was measured, its features of ``probe``): both
    engines timed on ``probe``, the faster kept if its features are within ``FAITHFUL_RELATIVE_DIFF``
    of the integer kernels'."""
    sessions = {name: session(model, config_entries=entries) for name, entries in ENGINES.items()}
    measured = {name: _timed(sess, probe, output) for name, sess in sessions.items()}
    exact, simulated = measured["integer kernels"][0], measured["QDQ in float"][0]
    relative = float(np.linalg.norm(simulated - exact) / max(np.linalg.norm(exact), 1e-12))
    speeds = {name: round(speed, 1) for name, (_, speed) in measured.items()}
    faithful = relative <= FAITHFUL_RELATIVE_DIFF
    chosen = max(speeds, key=speeds.get) if faithful else "integer kernels"
    report = {"engine": chosen, "probe_images": int(len(probe)), "images_per_s": speeds,
              "qdq_in_float_vs_integer_kernels": {"relative_l2_diff": round(relative, 6),
                                                  "max_abs_diff": round(float(np.abs(simulated - exact).max()), 6),
                                                  "faithful": faithful, "threshold": FAITHFUL_RELATIVE_DIFF}}
    log.info("int8 head features: %s (%s images/s; QDQ in float differs from the integer kernels by %.2f%% "
             "relative L2 on %d probe images)", chosen,
             ", ".join(f"{name} {speed:.0f}" for name, speed in speeds.items()), 100 * relative, len(probe))
    return sessions[chosen], report, measured[chosen][0]


def int8_features(model_path: Path, head: HeadNode, split: SplitListing, samples: Sequence[Sample],
                  card: ModelCard, progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The INT8 model's classifier inputs for ``samples``, their labels, and how they were computed
    (``choose_engine``: the faster faithful engine on this machine, measured on the first images)."""
    model = onnx.load(str(model_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(head.features, onnx.TensorProto.FLOAT, None))
    serialized = model.SerializeToString()
    int8, engine = None, {}
    features, labels = [], []
    chunks = pixel_chunks(split, samples, card.preprocess, LOAD_CHUNK)  # decoded while the previous chunk runs
    for loaded in track(chunks, "int8: head features", len(samples), enabled=progress,
                        count=lambda chunk: len(chunk.labels)):
        if not len(loaded.labels):
            continue
        probed = np.zeros((0, 0), np.float32)
        if int8 is None:  # the probe's features are the chosen engine's, batch for batch: kept
            int8, engine, probed = choose_engine(serialized, head.features, loaded.pixels[:PROBE_IMAGES])
        rest = loaded.pixels[len(probed):]
        if len(probed):
            features.append(probed)
        if len(rest):
            features.append(run_batches(int8, rest, FEATURE_BATCH, head.features).reshape(len(rest), -1))
        labels.append(loaded.labels)
    return np.concatenate(features).astype(np.float32), np.concatenate(labels), engine


def refit(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray,
          recipe: HeadRecipe) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Retrain ``features @ weight.T + bias`` from the given weights; deterministic for the seed.

    On one torch thread, as ``imgcls train`` trains a head on cached features: each step is a few
    tiny ops, which more threads only synchronise (1438 x 1280 features, 15 epochs, 2-core EPYC:
    0.3-1.5 s on one thread, 44-52 s on two while other processes shared the cores). The figures
    then also no longer depend on the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _refit(weight, bias, features, labels, recipe)
    finally:
        torch.set_num_threads(threads)


def _refit(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray,
           recipe: HeadRecipe) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    import torch
    from torch.nn import functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        x, y = torch.from_numpy(features), torch.from_numpy(labels)
        before = float((head(x).argmax(1) == y).float().mean())
        optimiser = (torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
                     if recipe.optimizer == "adamw" else
                     torch.optim.SGD(head.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                     weight_decay=recipe.weight_decay))
        total = recipe.epochs * math.ceil(len(y) / recipe.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        order = torch.Generator().manual_seed(recipe.seed)
        for _ in range(recipe.epochs):
            permutation = torch.randperm(len(y), generator=order)
            for start in range(0, len(y), recipe.batch_size):
                index = permutation[start:start + recipe.batch_size]
                loss = F.cross_entropy(head(x[index]), y[index], label_smoothing=recipe.label_smoothing)
                optimiser.zero_grad()
                loss.backward()
                if recipe.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), recipe.grad_clip)
                optimiser.step()
                schedule.step()
        with torch.no_grad():
            after = float((head(x).argmax(1) == y).float().mean())
            final_loss = float(F.cross_entropy(head(x), y))
        return (head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy(),
                {"train_top1_before": before, "train_top1_after": after, "train_loss_after": final_loss})


def write_head(source: Path, target: Path, head: HeadNode, weight: np.ndarray, bias: np.ndarray) -> None:
    """``source`` (its classifier left float) with the classifier's weight and bias replaced."""
    model = onnx.load(str(source))
    stored = weight if head.trans_b else weight.T
    replaced = {head.weight: stored, head.bias: bias}
    for index, init in enumerate(model.graph.initializer):
        if init.name in replaced:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(replaced.pop(init.name).astype(np.float32),
                                                                            init.name))
    if replaced:
        raise ValueError(f"{source}: classifier initializers not found: {sorted(replaced)}")
    onnx.save(model, str(target))


def head_samples(split: SplitListing, limit: int) -> list[Sample]:
    """Up to ``limit`` (>= 1) training samples spread evenly over the (class-sorted) training list."""
    train = list(split.train)
    return train[::max(1, math.ceil(len(train) / limit))][:limit]
