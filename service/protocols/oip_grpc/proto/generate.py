"""Regenerate the message modules of imgcls.service.protocols.oip_grpc from the .proto files beside this script.

The .proto files are Triton's (triton-inference-server/common, protobuf/: the Open Inference
Protocol's ``GRPCInferenceService`` and Triton's model configuration; BSD-3-Clause, see LICENSE here).
grpcio-tools' protoc writes the modules; three edits follow: protoc's check of the exact protobuf
runtime version goes (see VERSION_CHECK); their messages live in a descriptor pool
of their own (``imgcls.service.protocols.oip_grpc.pool.POOL``), so that a process which also imports
tritonclient's generated modules (same message names) has no clash, and the import of
``model_config_pb2`` names our package. Run from the checkout root:

    .venv/bin/python service/protocols/oip_grpc/proto/generate.py [OUT_DIR]

(default OUT_DIR: the package folder). tests/test_oip_grpc_stubs.py checks the committed modules are
exactly what this writes.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "imgcls.service.protocols.oip_grpc"
FILES = ("model_config", "grpc_service")
# protoc pins the protobuf runtime to its own major version and newer; the messages only need the
# builder API (protobuf >= 5.26), and tritonclient[grpc] pins protobuf < 7: the check would forbid both.
VERSION_CHECK = re.compile(r"from google\.protobuf import runtime_version as _runtime_version\n|"
                           r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n")
EDITS = (
    ("_descriptor_pool.Default().AddSerializedFile(", "POOL.AddSerializedFile("),
    ("from google.protobuf import symbol_database as _symbol_database\n",
     f"from google.protobuf import symbol_database as _symbol_database\nfrom {PACKAGE}.pool import POOL\n"),
    ("import model_config_pb2 as model__config__pb2", f"from {PACKAGE} import model_config_pb2 as model__config__pb2"),
)


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={raw}", *(str(PROTO_DIR / f"{name}.proto") for name in FILES)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for name in FILES:
            text = (Path(raw) / f"{name}_pb2.py").read_text()
            for old, new in EDITS:
                text = text.replace(old, new)
            text = VERSION_CHECK.sub("# (protoc's exact protobuf runtime check removed: see generate.py)\n", text)
            target = out_dir / f"{name}_pb2.py"
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR.parent):
        print(path)
