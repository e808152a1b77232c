"""The BentoML floor: a service that does nothing, served like imgcls (``bentoml serve``, same workers).

``benchmarks.bentoml_floor`` starts it to measure what the design card's framework costs by itself
(start to the first answer, peak RSS of arbiter + workers) beside imgcls and the peers.
"""
from __future__ import annotations

import os

import bentoml


@bentoml.service(workers=int(os.environ.get("FLOOR_WORKERS", "1")))
class Floor:
    @bentoml.api
    def ping(self, text: str = "") -> str:
        return text
