"""Rounds: a round is the checkpoint that generates candidates, the pairs it produced and their judgments.

    prefloop round new                     # next round from the newest policy checkpoint (round 0: the base model)
    prefloop round new --checkpoint 7 --overlap 2
    prefloop round new --if-none           # create round 0 only when the database has no round (used by `make run`)

`prefloop status` shows each round's checkpoint, prompts used, pairs, judgments and pairs with agreement pending.
"""

from __future__ import annotations

import argparse

from store import Store, StoreError
from store.runs import CHECKPOINT_KINDS
from training.cli import open_store

# Checkpoints that can generate text; a reward model scores it.
POLICY_KINDS = tuple(kind for kind in CHECKPOINT_KINDS if kind != "reward")


def start_round(store: Store, checkpoint_id: int | None = None, overlap_target: int = 1) -> tuple[int, dict]:
    """Start the next round; returns (round number, its checkpoint).

    Without `checkpoint_id` the newest policy checkpoint generates. With none registered, the base model is
    registered as a 'base' checkpoint under the name it was given ("embedded" or `$MODEL`), not a resolved path,
    so the database means the same model on every machine.
    """
    from training.models import default_model

    if checkpoint_id is not None:
        checkpoint = store.get_checkpoint(checkpoint_id)
        if checkpoint["kind"] not in POLICY_KINDS:
            raise StoreError(f"checkpoint {checkpoint_id} is a {checkpoint['kind']} model and cannot generate")
    else:
        checkpoint = store.latest_checkpoint(POLICY_KINDS)
        if checkpoint is None:
            checkpoint = store.get_checkpoint(store.register_checkpoint("base", default_model()))
    round_id = store.new_round(checkpoint["id"], overlap_target)
    return round_id, checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("round", help="start rounds (see `prefloop status` for per-round counts)")
    sub = p.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="start the next round from the newest policy checkpoint or a named one")
    new.add_argument("--checkpoint", type=int, help="checkpoint id that generates (default: newest policy checkpoint)")
    new.add_argument(
        "--overlap", type=int, default=1, help="judgments wanted per pair; above 1 measures agreement (default 1)"
    )
    new.add_argument("--if-none", action="store_true", help="do nothing when the database already has a round")
    new.set_defaults(run=cmd_round_new)


def cmd_round_new(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.if_none:
        existing = store.get_round()
        if existing is not None:
            print(f"round {existing['id']} exists (checkpoint {existing['checkpoint_id']}); nothing to do")
            return 0
    round_id, checkpoint = start_round(store, args.checkpoint, args.overlap)
    adapter = f", adapter {checkpoint['adapter_path']}" if checkpoint["adapter_path"] else ""
    print(
        f"round {round_id}: checkpoint {checkpoint['id']} ({checkpoint['kind']}, {checkpoint['base_model']}{adapter}),"
        f" overlap {args.overlap}"
    )
    return 0
