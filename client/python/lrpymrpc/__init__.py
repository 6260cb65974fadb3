"""The lrpymrpc client, installed as a binary beside this package.

`python -m lrpymrpc ARGS` runs it with ARGS; `find_lrpymrpc_bin()` says where it is.
"""

import os
import sys
import sysconfig


def find_lrpymrpc_bin() -> str:
    """The path of the `lrpymrpc` binary this package was installed with.

    Looked for as pip installs scripts: in this environment's scripts directory, then
    in the user scheme's (`pip install --user`), then beside this package's prefix.
    """
    name = "lrpymrpc.exe" if sys.platform == "win32" else "lrpymrpc"
    candidates = [sysconfig.get_path("scripts")]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        candidates.append(sysconfig.get_path("scripts", scheme=user_scheme))
    # A target install (`pip install --target DIR`) puts scripts in DIR/bin.
    candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin"))
    for directory in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        f"the lrpymrpc binary is not where pip installs it (looked in: {', '.join(candidates)}); "
        "reinstall the lrpymrpc-client wheel"
    )


def run(args) -> None:
    """Replaces this process with the binary: same arguments, same exit status, and
    signals (Ctrl-C) reach it directly."""
    binary = find_lrpymrpc_bin()
    if sys.platform == "win32":
        import subprocess

        sys.exit(subprocess.run([binary, *args]).returncode)
    os.execv(binary, [binary, *args])
