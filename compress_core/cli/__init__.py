"""``python -m compress_core``: one subcommand per module of this package.

Every ``CompressError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from compress_core.errors import CompressError

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` on it.
COMMAND_MODULES = ("inspect", "evaluate", "apply", "finetune", "export", "bench", "sensitivity", "suggest", "debug")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="python -m compress_core", description="Compression Explorer engine")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"compress_core.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
