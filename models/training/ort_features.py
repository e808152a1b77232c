"""Backbone features through ONNX Runtime, for ``imgcls train --strategy head``.

The frozen backbone (the model with its classifier replaced by ``nn.Identity``) is converted once
with the exporter and wrapper the bundle is made with (``imgcls.models.training.onnx_graph``: uint8
NCHW pixels in, normalised inside), and the cached features are computed by ONNX Runtime with one
thread per core of the machine. The head is therefore trained on the features the exported model
computes, and caching runs at the predictor's speed instead of PyTorch eager's (measured on
efficientnet_lite0, 2 cores: ONNX Runtime several times faster than eager).

Images are decoded as the Predictor decodes them (``imgcls.models.core.prefetch``: a pool of one
decode thread per core filling the next batches while ONNX Runtime runs the current one, uint8
NCHW batches handed to the session as they are) instead of through a ``DataLoader`` worker
process, whose batches went channels-last for eager PyTorch and back for ONNX Runtime.

Used on CPU in a single process; on a GPU or under DDP the eager module runs instead. The engine is
part of the feature cache's key (``engine_name``), so pieces computed by one are never reused by the other.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from imgcls.models.core.cpu import machine_cores
from imgcls.models.core.prefetch import decoded_batches, stack_decoded
from imgcls.models.core.preprocess import ImageDecodeError, Preprocess
from imgcls.models.training.onnx_graph import BUNDLE_OPSET, pixels_graph

log = logging.getLogger(__name__)

EAGER_ENGINE = "torch eager"
INPUT_NAME, OUTPUT_NAME = "pixels", "features"


def engine_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (dynamo graph, opset {BUNDLE_OPSET})"


class OrtBackbone:
    """``uint8 [N,3,H,W]`` tensor -> ``float32 [N,F]`` features, by ONNX Runtime on the exported backbone.

    The backbone is converted on the first call, so a run whose features are all cached exports nothing;
    ``on_converted`` then receives the converted graph (training keeps it for the export: ``backbone_graph``)."""

    def __init__(self, extractor: nn.Module, preprocess: Preprocess, threads: int | None = None,
                 on_converted: Callable[[onnx.ModelProto], None] | None = None) -> None:
        self.extractor, self.preprocess = extractor, preprocess
        self.threads = threads or machine_cores()
        self.on_converted = on_converted
        self.export_seconds = 0.0
        self._session = None

    def session(self):
        if self._session is None:
            import onnxruntime

            started = time.perf_counter()
            proto = pixels_graph(self.extractor, self.preprocess, opset=BUNDLE_OPSET, exporter="dynamo",
                                 names=(INPUT_NAME, OUTPUT_NAME))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # as the predictor: no busy-waiting threads, the data loader decodes on the same cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                                         providers=["CPUExecutionProvider"])
            self.export_seconds = time.perf_counter() - started
            log.info("backbone converted to ONNX for feature caching in %.1f s (ONNX Runtime, %d threads)",
                     self.export_seconds, self.threads)
            if self.on_converted is not None:
                self.on_converted(proto)
        return self._session

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"OrtBackbone takes uint8 pixels, got {pixels.dtype}")
        features = self.session().run([OUTPUT_NAME], {INPUT_NAME: pixels.cpu().numpy()})[0]
        return torch.from_numpy(features.reshape(len(features), -1))

    def batches(self, dataset: Sequence[tuple[torch.Tensor, int]], batch_size: int,
                ) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """``(uint8 [n,3,H,W], dataset indices)`` batches of ``dataset`` (uint8 pixel items) in order, decoded
        ahead by one thread per core; a file that cannot be read raises its ``ImageDecodeError``.

        The backbone is converted here, before the first batch is asked for, so the caller's progress
        (images/s, ETA) counts caching only."""
        self.session()
        return self._batches(dataset, batch_size)

    def _batches(self, dataset: Sequence[tuple[torch.Tensor, int]], batch_size: int,
                 ) -> Iterator[tuple[torch.Tensor, list[int]]]:
        def decode(index: int) -> np.ndarray:
            return dataset[index][0].numpy()

        with ThreadPoolExecutor(self.threads, thread_name_prefix="imgcls-feature-decode") as pool:
            for batch in decoded_batches(range(len(dataset)), decode, batch_size, pool):
                pixels, positions = stack_decoded(batch)
                if len(positions) < len(batch):
                    raise next(item for _, item in batch if isinstance(item, ImageDecodeError))
                yield torch.from_numpy(pixels), [index for index, _ in batch]
