"""What every command shares: the store it opens (--db, --lock-timeout) and how it prints (JSON, text tables)."""

from __future__ import annotations

import argparse
import json

from store import Store, open_store


def store_of(args: argparse.Namespace) -> Store:
    """The store the command line names."""
    return open_store(args.db, lock_timeout=args.lock_timeout)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def text_table(rows: list[dict], columns: list[str]) -> str:
    """`rows` as left-aligned columns under a header line, for a terminal."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
