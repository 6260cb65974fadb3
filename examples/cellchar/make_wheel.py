"""Builds a pure-Python wheel from a package directory with the standard library only.

Used by `cargo xtask demo` and the end-to-end tests, so that pip installs a local
package offline: no setuptools, no build isolation, no network.

usage: python3 make_wheel.py PACKAGE_DIR NAME VERSION OUT_DIR   (prints the wheel path)
"""

import base64
import hashlib
import os
import sys
import zipfile


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def build(package_dir: str, name: str, version: str, out_dir: str) -> str:
    dist_info = f"{name}-{version}.dist-info"
    files = {}
    for root, _dirs, names in sorted(os.walk(package_dir)):
        for file_name in sorted(names):
            if file_name.endswith(".pyc"):
                continue
            path = os.path.join(root, file_name)
            rel = os.path.relpath(path, os.path.dirname(os.path.abspath(package_dir)))
            with open(path, "rb") as f:
                files[rel.replace(os.sep, "/")] = f.read()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: make_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    os.makedirs(out_dir, exist_ok=True)
    wheel = os.path.join(out_dir, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
        archive.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), record)
    return wheel


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    print(build(*sys.argv[1:]))
