"""The store's commands: model, import, status, annotators, demo-admin (the local admin `make run` signs in with).

    prefloop demo-admin            # creates admin "demo" (or gives it a fresh token) and prints the token
"""

from __future__ import annotations

import argparse
from pathlib import Path

from store import StoreError
from training.cli.console import print_json, store_of, text_table

DEMO_ADMIN = "demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    add_store_commands(subparsers)
    add_demo_admin_command(subparsers)


def add_store_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="convert the embedded model to an HF checkpoint (once) and smoke-test it")
    p.set_defaults(run=cmd_model)

    p = subparsers.add_parser(
        "import",
        help="import prompts or labeled pairs from a file (atomic; duplicates skipped)",
        description="Formats: prompts as JSONL/CSV/Parquet/plain text; pairs in TRL standard or conversational "
        "format (explicit prompt or implicit shared prefix), OpenAI preference JSONL, or Anthropic HH transcripts. "
        "Imported pairs become judgments by the annotator import:<source>. A prompt record may carry a field "
        "split (train or heldout) that decides its split; without it the prompt's content hash does, and a prompt "
        "already stored keeps its split.",
    )
    p.add_argument("path", type=Path, help="file to import")
    p.add_argument(
        "--kind", choices=["auto", "prompts", "pairs"], default="auto", help="what the file holds (default: detect)"
    )
    p.add_argument("--source", help="source name recorded with each row (default: the file name)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out invalid records (each listed with its line and field) instead of refusing the whole file",
    )
    p.set_defaults(run=cmd_import)

    p = subparsers.add_parser("status", help="counts per round, split and annotator")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=cmd_status)

    p = subparsers.add_parser("annotators", help="create, disable and list annotators")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create an annotator and print its sign-in token (shown once)")
    add.add_argument("name")
    add.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    add.set_defaults(run=cmd_annotators_add)
    for action, disabled in (("disable", True), ("enable", False)):
        q = sub.add_parser(action, help=f"{action} an annotator")
        q.add_argument("name")
        q.set_defaults(run=cmd_annotators_disable, disabled=disabled)
    q = sub.add_parser("token", help="issue a new sign-in token (the old one stops working)")
    q.add_argument("name")
    q.set_defaults(run=cmd_annotators_token)
    q = sub.add_parser("list", help="list annotators with counts")
    q.set_defaults(run=cmd_annotators_list)

    p = subparsers.add_parser(
        "gold",
        help="mark pairs with a known answer: their judgments measure each annotator's accuracy (dashboard, eval "
        "--labels), and the answer is the pair's final label unless an admin adjudicates it",
    )
    sub = p.add_subparsers(dest="action", required=True)
    q = sub.add_parser("set", help="mark a pair as gold with its answer")
    q.add_argument("pair", type=int, help="pair id")
    q.add_argument("choice", choices=["a", "b", "tie", "both_bad"], help="the known answer, in stored a/b terms")
    q.set_defaults(run=cmd_gold_set)
    q = sub.add_parser("clear", help="unmark a gold pair")
    q.add_argument("pair", type=int, help="pair id")
    q.set_defaults(run=cmd_gold_set, choice=None)
    q = sub.add_parser("list", help="gold pairs with their answers and how many judgments got them right")
    q.set_defaults(run=cmd_gold_list)


def cmd_model(args: argparse.Namespace) -> int:
    from training.model_source import main

    main()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from store.importers import import_file, printable

    summary = import_file(
        store_of(args), args.path, kind=args.kind, source=args.source, skip_invalid=args.skip_invalid
    )
    splits = summary.inserted_by_split
    per_split = f" (train {splits.get('train', 0)}, held-out {splits.get('heldout', 0)})" if splits else ""
    name = printable(str(args.path))
    print(f"{name}: imported {summary.inserted} {summary.kind}{per_split}, skipped {summary.duplicates} duplicates")
    if summary.split_conflicts:
        print(
            f"{summary.split_conflicts} records asked for another split than the one their prompt already has; "
            "a stored prompt keeps its split"
        )
    if summary.invalid:
        print(f"left out {len(summary.invalid)} invalid records:")
        for problem in summary.invalid:
            print(f"  {problem}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = store_of(args).status()
    if args.json:
        print_json(status)
        return 0
    prompts = status["prompts"]
    print(f"database: {args.db}")
    print(f"prompts: {sum(prompts.values())} (train {prompts.get('train', 0)}, held-out {prompts.get('heldout', 0)})")
    print(f"imported pairs: {status['imported_pairs']}")
    print("\nrounds:")
    columns = ["round", "checkpoint_id", "checkpoint_kind", "prompts_used", "pairs", "complete", "judgments"]
    columns.append("agreement_pending")
    print(text_table(status["rounds"], columns) if status["rounds"] else "  none yet (prefloop round new)")
    print("\nannotators:")
    print(text_table(status["annotators"], ["name", "role", "disabled", "judgments"]) if status["annotators"] else "  none")
    return 0


def cmd_annotators_add(args: argparse.Namespace) -> int:
    annotator, token = store_of(args).add_annotator(args.name, args.role)
    print(f"created {annotator.role} {annotator.name!r}. Sign-in token (shown once, keep it): {token}")
    return 0


def cmd_annotators_disable(args: argparse.Namespace) -> int:
    store_of(args).set_annotator_disabled(args.name, args.disabled)
    print(f"{args.name}: {'disabled' if args.disabled else 'enabled'}")
    return 0


def cmd_annotators_token(args: argparse.Namespace) -> int:
    print(f"new sign-in token for {args.name} (shown once): {store_of(args).reset_token(args.name)}")
    return 0


def cmd_annotators_list(args: argparse.Namespace) -> int:
    print(text_table(store_of(args).list_annotators(), ["name", "role", "disabled", "judgments", "median_seconds"]))
    return 0


def add_demo_admin_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-admin",
        help=f"create the local admin {DEMO_ADMIN!r} (or issue it a new token) and print its sign-in token",
        description="For a local start (`make run`): every call prints a new token; the previous one stops working.",
    )
    p.set_defaults(run=cmd_demo_admin)


def cmd_demo_admin(args: argparse.Namespace) -> int:
    store = store_of(args)
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


def cmd_gold_set(args: argparse.Namespace) -> int:
    store_of(args).set_gold(args.pair, args.choice)
    print(f"pair {args.pair}: " + (f"gold answer {args.choice}" if args.choice else "no longer gold"))
    return 0


def cmd_gold_list(args: argparse.Namespace) -> int:
    rows = store_of(args).gold_pairs()
    print(text_table(rows, ["pair_id", "round_id", "gold_choice", "judgments", "correct"]) if rows else "no gold pairs")
    return 0
