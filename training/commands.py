"""Store-side subcommands: model, import, status, annotators, round."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import open_store, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
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


def cmd_model(args: argparse.Namespace) -> int:
    from training.models import main

    main()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from store.importers import import_file, printable

    summary = import_file(
        open_store(args), args.path, kind=args.kind, source=args.source, skip_invalid=args.skip_invalid
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


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    status = open_store(args).status()
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
    print(_table(status["rounds"], columns) if status["rounds"] else "  none yet (prefloop round new)")
    print("\nannotators:")
    print(_table(status["annotators"], ["name", "role", "disabled", "judgments"]) if status["annotators"] else "  none")
    return 0


def cmd_annotators_add(args: argparse.Namespace) -> int:
    annotator, token = open_store(args).add_annotator(args.name, args.role)
    print(f"created {annotator.role} {annotator.name!r}. Sign-in token (shown once, keep it): {token}")
    return 0


def cmd_annotators_disable(args: argparse.Namespace) -> int:
    open_store(args).set_annotator_disabled(args.name, args.disabled)
    print(f"{args.name}: {'disabled' if args.disabled else 'enabled'}")
    return 0


def cmd_annotators_token(args: argparse.Namespace) -> int:
    print(f"new sign-in token for {args.name} (shown once): {open_store(args).reset_token(args.name)}")
    return 0


def cmd_annotators_list(args: argparse.Namespace) -> int:
    print(_table(open_store(args).list_annotators(), ["name", "role", "disabled", "judgments", "median_seconds"]))
    return 0
