"""`python3 -m lrPymRPC ARGS`: runs lrpymrpc with ARGS (lrpymrpc-compat)."""

import sys


def upstream_installed() -> bool:
    """Whether pip also installed the upstream lrPymRPC package here: it owns this very
    module name, so one was installed over the other's files."""
    try:
        from importlib import metadata
    except ImportError:
        return False
    try:
        metadata.distribution("lrPymRPC")
    except metadata.PackageNotFoundError:
        return False
    return True


def main() -> None:
    if upstream_installed():
        print(
            "lrpymrpc-compat: warning: the upstream lrPymRPC package is installed in this environment too; "
            "both provide the module `lrPymRPC`, so pip wrote one over the other's files\n"
            "hint: keep one: `pip uninstall lrPymRPC` (then reinstall lrpymrpc-compat), "
            "or `pip uninstall lrpymrpc-compat`",
            file=sys.stderr,
        )
    try:
        from lrpymrpc import run
    except ImportError:
        print(
            "lrpymrpc-compat: error: the lrpymrpc-client package is missing\n"
            "hint: pip install lrpymrpc-client",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        run(sys.argv[1:])
    except FileNotFoundError as error:
        print(f"lrpymrpc-compat: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
