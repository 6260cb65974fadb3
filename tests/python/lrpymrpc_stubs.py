"""Generates the FileService stubs from proto/file_service.proto with grpcio-tools,
as the deployed Python peers are built, and imports them."""

import importlib
import os
import sys
import tempfile


def load(proto_path):
    """Returns (file_service_pb2, file_service_pb2_grpc) made from `proto_path`."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="lrpymrpc-stubs-")
    proto_dir = os.path.dirname(os.path.abspath(proto_path))
    name = os.path.basename(proto_path)
    status = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", name])
    if status != 0:
        raise SystemExit(f"protoc failed on {proto_path} ({status})")
    sys.path.insert(0, out)
    module = name[: -len(".proto")]
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")
