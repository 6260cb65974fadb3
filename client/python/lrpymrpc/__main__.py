"""`python -m lrpymrpc ARGS`: runs the lrpymrpc binary with ARGS."""

import sys

from lrpymrpc import find_lrpymrpc_bin, run


def main() -> None:
    try:
        run(sys.argv[1:])
    except FileNotFoundError as error:
        print(f"lrpymrpc: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

__all__ = ["find_lrpymrpc_bin", "main"]
