"""`prefloop`: the one command-line interface; the Makefile's targets wrap its subcommands.

    prefloop --help
    prefloop --db data/prefloop.duckdb status

The commands sit on top of the library and import it, never the reverse: `store_commands` (model, import, status,
annotators, demo-admin), `loop_commands` (round, generate, export, eval, label-sim, loop-sim, loop-plot) and
`train_commands` (train-sft, train-rm, train-dpo, train-ppo, train-rloo, merge). Heavy imports (torch,
transformers) stay inside the library's functions, so `--help` and the store commands start quickly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from store import DEFAULT_DB_PATH, StoreError, default_db_path
from training.cli import loop_commands, store_commands, train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefloop",
        description="Label preference pairs, export them, train LoRA adapters on them, and measure each round.",
    )
    parser.add_argument(
        "--db", type=Path, default=default_db_path(), help=f"DuckDB database file (default: $PREFLOOP_DB or {DEFAULT_DB_PATH})"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for another process to release the database before giving up (default 30)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (store_commands, loop_commands, train_commands):
        commands.register(subparsers)
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
