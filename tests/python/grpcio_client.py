"""A FileService client written from the proto with grpcio, as the deployed Python
client (lrPymRPC) works: pack the sources under their base names into one tar.gz,
upload it in 1 MiB chunks, print every Execute message as it comes, check, download
and unpack the results, with its status lines. It knows none of lrpymrpc's
extensions. Used by the compatibility tests only."""

import argparse
import io
import os
import sys
import tarfile

import grpc

import lrpymrpc_stubs

CHUNK = 1024 * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto", required=True)
    parser.add_argument("--server", required=True, help="HOST:PORT")
    parser.add_argument("--tls-dir", required=True, help="nested layout: client/client.key, client/client.crt, ca/ca.crt")
    parser.add_argument("--source", nargs="+", default=[])
    parser.add_argument("--result", nargs="+", default=[])
    parser.add_argument("--cmd", required=True)
    parser.add_argument("--repo-url", default="")
    args = parser.parse_args()
    pb2, pb2_grpc = lrpymrpc_stubs.load(args.proto)

    def read(*parts):
        with open(os.path.join(args.tls_dir, *parts), "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca", "ca.crt"),
        private_key=read("client", "client.key"),
        certificate_chain=read("client", "client.crt"),
    )
    prefix = f"[{args.server}]:"
    with grpc.secure_channel(args.server, credentials) as channel:
        stub = pb2_grpc.FileServiceStub(channel)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for source in args.source:
                tar.add(source, arcname=os.path.basename(os.path.normpath(source)), recursive=True)
        data = archive.getvalue()
        chunks = (pb2.DataChunk(data=data[i : i + CHUNK]) for i in range(0, len(data), CHUNK))
        unique_id = stub.Upload(chunks).unique_id
        print(f"{prefix}unique id={unique_id}", flush=True)
        request = pb2.ExecuteRequest(unique_id=unique_id, tool=args.repo_url, command_opt=args.cmd)
        for response in stub.Execute(request):
            print(response.message, flush=True)
        result_dir = " ".join(args.result)
        if stub.Check(pb2.CheckRequest(unique_id=unique_id, result_dir=result_dir)).has_stream:
            print(f"{prefix}Download data is exist.", flush=True)
            received = io.BytesIO()
            for chunk in stub.Download(pb2.DownloadRequest(unique_id=unique_id, result_dir=result_dir)):
                received.write(chunk.data)
            received.seek(0)
            with tarfile.open(fileobj=received, mode="r:gz") as tar:
                tar.extractall(".", filter="data")
        print(f"{prefix}Finish.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
