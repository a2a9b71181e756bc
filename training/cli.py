"""`prefloop`: the one command-line interface; the Makefile's targets wrap its subcommands.

    prefloop --help
    prefloop --db data/prefloop.duckdb status

Each subcommand lives next to the code it runs: a module in COMMAND_MODULES exposes `register(subparsers)`, which
adds its parser(s) with `set_defaults(run=function)`. Heavy imports (torch, transformers) stay inside the functions,
so `--help` and the store commands start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from store import Store, StoreError

DEFAULT_DB = "data/prefloop.duckdb"

COMMAND_MODULES = [
    "training.commands",
    "training.rounds",
    "training.generate",
    "training.export",
    "training.evaluate",
    "labeler.cli",
    "training.sft",
    "training.reward",
    "training.dpo",
    "training.ppo",
    "training.rloo",
    "training.merge",
    "training.judges",
    "training.loop_sim",
]


def open_store(args: argparse.Namespace) -> Store:
    return Store(args.db, lock_timeout=args.lock_timeout)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefloop",
        description="Label preference pairs, export them, train LoRA adapters on them, and measure each round.",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path(os.environ.get("PREFLOOP_DB") or DEFAULT_DB),
        help=f"DuckDB database file (default: $PREFLOOP_DB or {DEFAULT_DB})",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for another process to release the database before giving up (default 30)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a multi-GPU run relaunches in each process
    try:
        return args.run(args) or 0
    except (StoreError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"prefloop {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
