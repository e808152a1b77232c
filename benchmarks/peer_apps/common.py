"""The work every peer does per image, identical to imgcls: our ``Preprocess`` + ORT + top-5.

Decode with Pillow through the card's ``Preprocess`` (draft decoding, resize, centre crop, uint8
``[3, H, W]``), one ONNX Runtime CPU session on the bundle's ``model.onnx`` configured as imgcls
configures its own (intra-op threads = usable CPUs / instances, inter-op 1, no spinning), softmax,
top-5 as ``{"label", "index", "score"}``. Used by the peer apps inside their own venvs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from imgcls.models.core.bundle import model_file
from imgcls.models.core.card import ModelCard
from imgcls.models.core.preprocess import Preprocess

TOP_K = 5


def usable_cpus() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def decode(preprocess: Preprocess, data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 ``[3, H, W]``: exactly imgcls's ``Predictor.decode`` (draft decode, resize, crop)."""
    return preprocess.pixels(preprocess.load(data))


class Classifier:
    """One model instance: ``decode`` bytes -> uint8 pixels, ``infer`` a batch -> top-5 per row."""

    def __init__(self, bundle: str | Path, threads: int) -> None:
        self.card = ModelCard.load(bundle)
        self.preprocess = self.card.preprocess
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = model_file(Path(bundle), self.card, "fp32")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def decode(self, data: bytes) -> np.ndarray:
        return decode(self.preprocess, data)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(pixels)})
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def top_k(self, row: np.ndarray) -> list[dict[str, Any]]:
        order = np.argsort(-row, kind="stable")[:TOP_K]
        return [{"label": self.card.class_names[int(i)], "index": int(i), "score": float(row[i])} for i in order]

    def classify(self, pixels: np.ndarray) -> list[list[dict[str, Any]]]:
        """uint8 ``[N, 3, H, W]`` -> top-5 per image."""
        return [self.top_k(row) for row in self.probabilities(pixels)]
