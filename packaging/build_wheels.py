"""Builds the Python wheels: `lrpymrpc-client` (the Rust binary, with maturin) and
`lrpymrpc-compat` (the `lrPymRPC` module that runs it, with the standard library).

usage: python3 packaging/build_wheels.py [--out DIR] [--debug] [--maturin PATH]

Needs maturin (`pip install maturin`) and cargo; nothing else is downloaded but the
crates cargo fetches. `--debug` builds the binary without optimizations (faster, for
tests). Prints the paths of the two wheels.
"""

import argparse
import base64
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workspace_version() -> str:
    with open(os.path.join(REPO, "Cargo.toml"), encoding="utf-8") as f:
        match = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    if not match:
        sys.exit("build_wheels.py: no version in Cargo.toml")
    return match.group(1)


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def compat_wheel(version: str, out_dir: str) -> str:
    """The pure-Python `lrpymrpc-compat` wheel, requiring the client of the same version."""
    dist_info = f"lrpymrpc_compat-{version}.dist-info"
    package = os.path.join(REPO, "packaging", "compat", "lrPymRPC")
    files = {}
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                files[f"lrPymRPC/{name}"] = f.read()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        "Name: lrpymrpc-compat\n"
        f"Version: {version}\n"
        "Summary: python3 -m lrPymRPC runs lrpymrpc: an unchanged Makefile uses the Rust client\n"
        "License: MIT\n"
        "Requires-Python: >=3.8\n"
        f"Requires-Dist: lrpymrpc-client=={version}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: lrpymrpc build_wheels.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    wheel = os.path.join(out_dir, f"lrpymrpc_compat-{version}-py3-none-any.whl")
    stamp = (2020, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=stamp), data)
        archive.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=stamp), record)
    return wheel


def client_wheel(out_dir: str, debug: bool, maturin: str) -> str:
    """The `lrpymrpc-client` wheel, built by maturin from `client/pyproject.toml`."""
    before = set(glob.glob(os.path.join(out_dir, "lrpymrpc_client-*.whl")))
    command = [maturin, "build", "--manifest-path", os.path.join(REPO, "client", "Cargo.toml"), "--out", out_dir]
    if not debug:
        command.append("--release")
    subprocess.run(command, check=True, stdout=sys.stderr)
    built = sorted(set(glob.glob(os.path.join(out_dir, "lrpymrpc_client-*.whl"))) - before)
    if not built:
        built = sorted(glob.glob(os.path.join(out_dir, "lrpymrpc_client-*.whl")))
    if not built:
        sys.exit("build_wheels.py: maturin made no lrpymrpc_client wheel")
    return built[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the lrpymrpc-client and lrpymrpc-compat wheels.")
    parser.add_argument("--out", default=os.path.join(REPO, "target", "wheels"), help="where the wheels go")
    parser.add_argument("--debug", action="store_true", help="an unoptimized binary (for tests)")
    parser.add_argument("--maturin", default=shutil.which("maturin") or "maturin", help="the maturin to run")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(client_wheel(args.out, args.debug, args.maturin))
    print(compat_wheel(workspace_version(), args.out))


if __name__ == "__main__":
    main()
