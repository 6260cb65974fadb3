"""lrpymrpc-compat: `python3 -m lrPymRPC ...` runs lrpymrpc with the same arguments.

An opt-in stand-in for the upstream lrPymRPC client, so that a Makefile that says
`python3 -m lrPymRPC` changes zero words. It provides the same module name as the
upstream package: install one or the other in an environment, never both.
"""
