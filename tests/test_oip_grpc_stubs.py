"""The gRPC message modules are exactly what proto/generate.py writes from the committed .proto files,
and they describe the same messages as tritonclient's own generated modules (field numbers and types:
the wire format), while living in a descriptor pool of their own (both import in one process)."""
from __future__ import annotations

import runpy

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "service" / "protocols" / "oip_grpc"


def test_committed_modules_are_what_the_generator_writes(tmp_path):
    generate = runpy.run_path(str(PACKAGE / "proto" / "generate.py"))["generate"]
    for written in generate(tmp_path):
        committed = PACKAGE / written.name
        assert committed.read_text() == written.read_text(), f"{committed} is stale: run proto/generate.py"


def _fields(descriptor) -> dict:
    out = {}
    for field in descriptor.fields:
        kind = field.message_type.full_name if field.message_type else field.type
        out[field.name] = (field.number, kind, field.label if hasattr(field, "label") else None)
    return out


def test_messages_match_tritonclients_and_live_in_their_own_pool():
    from tritonclient.grpc import service_pb2 as theirs

    from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as ours
    from imgcls.service.protocols.oip_grpc.pool import POOL

    names = ["ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "ModelConfigResponse",
             "InferParameter", "InferTensorContents", "RepositoryIndexResponse", "ServerMetadataResponse"]
    for name in names:
        assert _fields(getattr(ours, name).DESCRIPTOR) == _fields(getattr(theirs, name).DESCRIPTOR), name
    nested = ours.ModelInferRequest.DESCRIPTOR.nested_types_by_name["InferInputTensor"]
    assert _fields(nested) == _fields(theirs.ModelInferRequest.DESCRIPTOR.nested_types_by_name["InferInputTensor"])
    assert ours.ModelInferRequest.DESCRIPTOR.file.pool is POOL
    assert theirs.ModelInferRequest.DESCRIPTOR.file.pool is not POOL
    assert (PACKAGE / "proto" / "LICENSE").read_text().startswith("Copyright (c)")
