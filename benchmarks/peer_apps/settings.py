"""The settings the harness hands a peer app (JSON in ``PEER_SETTINGS``); stdlib only."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerSettings:
    """What the harness passes to a peer app (as JSON in ``PEER_SETTINGS``)."""

    bundle: str
    port: int
    instances: int = 1  # model instances / inference workers
    batching: bool = True
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    decode_workers: int = 1  # mosec's decode stage; others decode in the instance
    extra_ports: tuple[int, ...] = ()  # Triton's gRPC and metrics ports

    @classmethod
    def from_json(cls, text: str) -> "PeerSettings":
        data = json.loads(text)
        data["extra_ports"] = tuple(data.get("extra_ports", ()))
        return cls(**data)
