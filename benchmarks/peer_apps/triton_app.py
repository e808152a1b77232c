"""Triton peer through PyTriton: the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel in front
of Python inference callables, driven over the Open Inference Protocol.

    PEER_SETTINGS='{"bundle": ..., "port": ..., "extra_ports": [grpc, metrics]}' python -m benchmarks.peer_apps.triton_app

Model ``bundle`` (the speed bundle's name, which imgcls's ``/v2`` serves too): input ``image``
(BYTES, one encoded JPEG per row), outputs ``labels`` (BYTES [5]) and ``scores`` (FP32 [5]).
With batching on, Triton's dynamic batcher (``max_batch_size``, ``batch_wait_ms`` queue delay)
hands each instance a batch; ``instances`` callables are bound, each its own model instance with
its own ORT session (intra-op threads = usable CPUs / instances). An undecodable image fails the
request (PyTriton answers it with an error status).
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peer_apps.common import TOP_K, Classifier, usable_cpus
from benchmarks.peer_apps.settings import PeerSettings

SETTINGS = PeerSettings.from_json(os.environ["PEER_SETTINGS"])
MODEL = "bundle"


def make_infer(classifier: Classifier) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        pixels = np.stack([classifier.decode(bytes(item)) for item in image.reshape(-1)])
        tops = classifier.classify(pixels)
        labels = np.array([[p["label"].encode() for p in top] for top in tops], dtype=np.object_)
        scores = np.array([[p["score"] for p in top] for top in tops], dtype=np.float32)
        return {"labels": labels, "scores": scores}

    return infer


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    grpc_port, metrics_port = SETTINGS.extra_ports
    threads = max(1, usable_cpus() // SETTINGS.instances)
    infers = [make_infer(Classifier(SETTINGS.bundle, threads)) for _ in range(SETTINGS.instances)]
    config = TritonConfig(http_address="127.0.0.1", http_port=SETTINGS.port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port, metrics_port=metrics_port, allow_metrics=False, log_verbose=0)
    if SETTINGS.batching:
        model_config = ModelConfig(max_batch_size=SETTINGS.max_batch_size, batcher=DynamicBatcher(
            max_queue_delay_microseconds=int(SETTINGS.batch_wait_ms * 1000)))
        outputs = [Tensor(name="labels", dtype=np.bytes_, shape=(TOP_K,)),
                   Tensor(name="scores", dtype=np.float32, shape=(TOP_K,))]
    else:  # each request is one image: [1] in, [1, 5] out
        model_config = ModelConfig(batching=False)
        outputs = [Tensor(name="labels", dtype=np.bytes_, shape=(-1, TOP_K)),
                   Tensor(name="scores", dtype=np.float32, shape=(-1, TOP_K))]
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL, infer_func=infers, inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                    outputs=outputs, config=model_config, strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
