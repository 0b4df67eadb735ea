"""The ``moecomm`` console script. Subcommands: ``bench`` (see ``moecomm bench --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches ``moecomm <subcommand> ...``; returns the exit code (argparse errors exit with 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="moecomm", description="moecomm: MoE expert-parallel runtime tools")
    parser.add_argument("subcommand", choices=("bench",), help="bench: microbenchmarks and the token-drop study")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parser.parse_args(argv[:1])
    from moecomm.bench.cli import main as bench_main

    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
