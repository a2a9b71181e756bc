"""`prefloop demo-admin`: the local admin `make run` signs in with.

    prefloop demo-admin            # creates admin "demo" (or gives it a fresh token) and prints the token
"""

from __future__ import annotations

import argparse

from store import StoreError
from training.cli import open_store

DEMO_ADMIN = "demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-admin",
        help=f"create the local admin {DEMO_ADMIN!r} (or issue it a new token) and print its sign-in token",
        description="For a local start (`make run`): every call prints a new token; the previous one stops working.",
    )
    p.set_defaults(run=cmd_demo_admin)


def cmd_demo_admin(args: argparse.Namespace) -> int:
    store = open_store(args)
    existing = store.get_annotator(DEMO_ADMIN)
    if existing is None:
        _, token = store.add_annotator(DEMO_ADMIN, "admin")
    elif existing.role != "admin":
        raise StoreError(f"an annotator named {DEMO_ADMIN!r} exists but is an {existing.role}, not an admin")
    else:
        store.set_annotator_disabled(DEMO_ADMIN, False)
        token = store.reset_token(DEMO_ADMIN)
    print(f"\n  Sign in to the labeling app (`make label`: http://127.0.0.1:8501) as admin {DEMO_ADMIN!r} with this "
          f"token:\n\n      {token}\n")
    return 0
