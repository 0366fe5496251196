"""The ``pooled-sessions`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="pooled-sessions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="a short simulated web workload on a JSON file store",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.run(rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
