"""LitServe peer: ``LitAPI`` with ``decode_request``/``batch``/``predict``/``unbatch``/``encode_response``.

    PEER_SETTINGS='{"bundle": ..., "port": ...}' python -m benchmarks.peer_apps.litserve_app

The image arrives base64 in a JSON body (``{"image": ...}``), as LitServe's image examples send
it (a multipart upload cannot cross LitServe 0.2.19's process queue: its ``UploadFile`` does not
pickle); ``decode_request`` decodes the base64 and runs our ``Preprocess`` in the inference worker, LitServe batches up to
``max_batch_size`` within ``batch_wait_ms`` when batching is on, and ``instances`` is
``workers_per_device`` on the CPU. An undecodable image is a 400 (``HTTPException``).
Endpoint: ``POST /predict``.
"""
import base64
import binascii
import os
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException, Request

from benchmarks.peer_apps.common import Classifier, usable_cpus
from benchmarks.peer_apps.settings import PeerSettings

SETTINGS = PeerSettings.from_json(os.environ["PEER_SETTINGS"])


class ClassifierAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = Classifier(SETTINGS.bundle, usable_cpus() // SETTINGS.instances)

    # No ``from __future__ import annotations`` here: LitServe reads this annotation at run time, and
    # starlette's Request makes it parse the body (JSON here) into the dict this method receives.
    def decode_request(self, request: Request) -> np.ndarray:
        try:
            return self.classifier.decode(base64.b64decode(request["image"], validate=True))
        except (KeyError, TypeError, binascii.Error, ValueError) as exc:  # ImageDecodeError is a ValueError
            raise HTTPException(status_code=400, detail=f"not a decodable image: {exc}") from exc

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, pixels: np.ndarray) -> Any:
        if pixels.ndim == 3:  # batching off: one image
            return self.classifier.classify(pixels[None])[0]
        return self.classifier.classify(pixels)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"predictions": output}


def main() -> None:
    batch = SETTINGS.max_batch_size if SETTINGS.batching else 1
    api = ClassifierAPI(max_batch_size=batch, batch_timeout=SETTINGS.batch_wait_ms / 1000 if SETTINGS.batching else 0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=SETTINGS.instances, timeout=60)
    server.run(host="127.0.0.1", port=SETTINGS.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
