"""mosec peer: a decode stage and an inference stage with dynamic batching (mosec's documented design).

    PEER_SETTINGS='{"bundle": ..., "port": ...}' python -m benchmarks.peer_apps.mosec_app

Stage 1 (``decode_workers`` processes) takes the raw JPEG body (``deserialize`` returns the bytes)
and decodes it with our ``Preprocess``; stage 2 (``instances`` processes) batches up to
``max_batch_size`` within ``batch_wait_ms`` and runs ORT + top-5, serialised as JSON.
An image that does not decode is a 422 (mosec's ValidationError). Endpoint: ``POST /inference``.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
from mosec import Server, ValidationError, Worker

from benchmarks.peer_apps.common import Classifier, decode, usable_cpus
from benchmarks.peer_apps.settings import PeerSettings

SETTINGS = PeerSettings.from_json(os.environ["PEER_SETTINGS"])


class Decode(Worker):
    def __init__(self) -> None:
        super().__init__()
        from imgcls.models.core.card import ModelCard

        self.preprocess = ModelCard.load(SETTINGS.bundle).preprocess

    def deserialize(self, data: bytes) -> bytes:
        return data

    def forward(self, data: bytes) -> np.ndarray:
        try:
            return decode(self.preprocess, data)
        except ValueError as exc:  # ImageDecodeError is a ValueError
            raise ValidationError(f"not a decodable image: {exc}") from exc


class Infer(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = Classifier(SETTINGS.bundle, usable_cpus() // SETTINGS.instances)

    def forward(self, data: Any) -> Any:
        if SETTINGS.batching:
            return [{"predictions": top} for top in self.classifier.classify(np.stack(data))]
        return {"predictions": self.classifier.classify(data[None])[0]}


def main() -> None:
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(SETTINGS.port), "--log-level", "warning",
                "--timeout", "60000"]
    server = Server()
    server.append_worker(Decode, num=SETTINGS.decode_workers)
    if SETTINGS.batching:
        server.append_worker(Infer, num=SETTINGS.instances, max_batch_size=SETTINGS.max_batch_size,
                             max_wait_time=max(1, int(SETTINGS.batch_wait_ms)))
    else:
        server.append_worker(Infer, num=SETTINGS.instances)
    server.run()


if __name__ == "__main__":
    main()
