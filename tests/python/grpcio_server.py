"""A FileService server written from the proto with grpcio, behaving as the Python
server does as far as the client can see (`../shared/PROTOCOL.md`): unpack each
upload into a fresh job directory named by a UUID, pip-install `tool`, run
`command_opt` with a shell, stream stdout and stderr merged, one line per message,
with no exit status and no stream label, and answer Check and Download for the result
paths. It serves no extension service, so a client probing for one gets UNIMPLEMENTED.
Mutual TLS as deployed. Used by the compatibility tests only."""

import argparse
import io
import os
import subprocess
import sys
import tarfile
import uuid
from concurrent import futures

import grpc

import lrpymrpc_stubs

CHUNK = 1024 * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto", required=True)
    parser.add_argument("--root", required=True, help="where job directories go")
    parser.add_argument("--server-cert", required=True)
    parser.add_argument("--server-key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    pb2, pb2_grpc = lrpymrpc_stubs.load(args.proto)

    def job_dir(unique_id, context):
        try:
            name = str(uuid.UUID(unique_id))
        except ValueError:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such job")
        path = os.path.join(args.root, name)
        if not os.path.isdir(path):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such job")
        return path

    class FileService(pb2_grpc.FileServiceServicer):
        def Upload(self, request_iterator, context):
            data = b"".join(chunk.data for chunk in request_iterator)
            unique_id = str(uuid.uuid4())
            path = os.path.join(args.root, unique_id)
            os.makedirs(path)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(path, filter="data")
            return pb2.UploadResponse(unique_id=unique_id)

        def Execute(self, request, context):
            path = job_dir(request.unique_id, context)
            for item in request.tool.split(","):
                if "=" in item:
                    url = item.split("=", 1)[1].strip()
                    if url:
                        subprocess.run([sys.executable, "-m", "pip", "install", "-q", url], cwd=path, check=True)
            process = subprocess.Popen(
                request.command_opt, shell=True, cwd=path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for line in process.stdout:
                yield pb2.ExecuteResponse(message=line.decode("utf-8", "replace").rstrip("\n"))
            process.wait()

        def Check(self, request, context):
            path = job_dir(request.unique_id, context)
            found = any(os.path.exists(os.path.join(path, name)) for name in request.result_dir.split())
            return pb2.CheckResponse(has_stream=found)

        def Download(self, request, context):
            path = job_dir(request.unique_id, context)
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                for name in request.result_dir.split():
                    if os.path.exists(os.path.join(path, name)):
                        tar.add(os.path.join(path, name), arcname=name)
            data = archive.getvalue()
            for i in range(0, len(data), CHUNK):
                yield pb2.DataChunk(data=data[i : i + CHUNK])

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_server_credentials(
        [(read(args.server_key), read(args.server_cert))], root_certificates=read(args.ca), require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb2_grpc.add_FileServiceServicer_to_server(FileService(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
