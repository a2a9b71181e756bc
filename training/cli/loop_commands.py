"""The loop's commands: round, generate, export, eval, label-sim, loop-sim, loop-plot. Each parses its config
(defaults < --config YAML < options), calls the stage's library function in `training.loop` and prints what it did."""

from __future__ import annotations

import argparse
from pathlib import Path

from store import Store
from training.cli.console import store_of, text_table
from training.config import add_arguments, from_args
from training.loop import evaluation, export, generation
from training.loop.evaluation import EvalConfig, evaluate, select_checkpoints
from training.loop.export import ExportConfig
from training.loop.generation import GenerateConfig, generate
from training.loop.judges import label_with_judge, load_judge
from training.loop.loop_report import plot_summary
from training.loop.loop_sim import LoopConfig, run_loop
from training.loop.rounds import start_round
from training.metrics import format_estimate, label_quality, result_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    add_round_commands(subparsers)
    add_generate_commands(subparsers)
    add_export_commands(subparsers)
    add_eval_commands(subparsers)
    add_label_sim_commands(subparsers)
    add_loop_sim_commands(subparsers)
    add_loop_plot_commands(subparsers)


# --- round ------------------------------------------------------------------------------------------------------------


def add_round_commands(subparsers: argparse._SubParsersAction) -> None:
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
    store = store_of(args)
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


# --- generate ---------------------------------------------------------------------------------------------------------


def add_generate_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample responses from the round's checkpoint and store pairs to label",
        description=generation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, GenerateConfig)
    p.add_argument(
        "--if-no-pairs", action="store_true", help="do nothing when the database already has pairs (for `make run`)"
    )
    p.set_defaults(run=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    store = store_of(args)
    if args.if_no_pairs and store.count_pairs() > 0:
        print("the database has pairs already; nothing to generate")
        return 0
    config = from_args(GenerateConfig, args)
    s = generate(store, config)
    print(
        f"round {s.round_id}: {s.prompts} prompts, {s.responses} responses, {s.pairs} new pairs "
        f"({s.duplicates} duplicates skipped, {s.unpaired_prompts} prompts without an eligible pair, "
        f"{s.truncated} responses cut at the token limit){f'; pairs chosen {s.selection}' if s.selection else ''}; "
        f"{s.completion_tokens} tokens in {s.seconds:.1f} s ({s.completion_tokens / max(s.seconds, 1e-9):.1f} tokens/s)"
    )
    return 0


# --- export -----------------------------------------------------------------------------------------------------------


def add_export_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="build a Hugging Face preference dataset from the judgments",
        description=export.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, ExportConfig)
    p.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from datasets import disable_progress_bars

    disable_progress_bars()  # writes take a moment; the summary line says what was written
    result = export.export(store_of(args), from_args(ExportConfig, args))
    counts = result["counts"]
    rows = ", ".join(
        f"{s} {n}" for s, n in counts.items() if isinstance(n, int) and s not in ("judged_pairs", "judgments")
    )
    dropped = ", ".join(f"{reason} {n}" for reason, n in counts["dropped"].items() if n) or "none"
    print(f"export {result['name']} (id {result['id']}): {rows}; dropped: {dropped}\n  {result['path']}")
    return 0


# --- eval -------------------------------------------------------------------------------------------------------------


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="held-out accuracy, win rate, KL and length per checkpoint, with 95%% confidence intervals",
        description=evaluation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, metavar="ID", help="evaluate this checkpoint only")
    which.add_argument("--all", action="store_true", help="evaluate every registered checkpoint")
    which.add_argument("--table", action="store_true", help="print the stored results and evaluate nothing")
    which.add_argument("--labels", action="store_true", help="print label quality and evaluate nothing")
    add_arguments(p, EvalConfig)
    p.set_defaults(run=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    store = store_of(args)
    config = from_args(EvalConfig, args)
    config.validate()
    if args.labels:
        print(labels_report(store, config.seed, config.bootstrap))
        return 0
    if not args.table:
        checkpoints = select_checkpoints(store, args.checkpoint, args.all)
        if not checkpoints:
            print("no checkpoints registered: start a round (`prefloop round new`) or train one")
            return 1
        evaluate(store, config, checkpoints)
    print(results_table(store))
    return 0


def results_table(store: Store) -> str:
    rows = [
        row | dict(
            value="" if row["value"] is None else f"{row['value']:.3f}",
            ci95="" if row["ci_low"] is None else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]",
        )
        for row in result_rows(store.list_eval_results())
    ]
    if not rows:
        return "no evaluation results yet: run `prefloop eval`"
    return text_table(rows, ["round", "checkpoint", "kind", "metric", "value", "ci95", "n", "source"])


def labels_report(store: Store, seed: int = 0, n_boot: int = 1000) -> str:
    quality = label_quality(store.label_rows(), seed, n_boot)
    lines = [
        f"Cohen's kappa (first two judgments of each pair): {format_estimate(quality['kappa'])}",
        f"Krippendorff's alpha (nominal, all judgments):    {format_estimate(quality['alpha'])}",
    ]
    rows = [
        dict(
            annotator=a["annotator"],
            judgments=a["count"],
            median_s="" if a["median_seconds"] is None else f"{a['median_seconds']:.1f}",
            **{key: format_estimate(a[key], 2) for key in ("agreement", "left_rate", "longer_rate", "gold_accuracy")},
        )
        for a in quality["annotators"]
    ]
    if rows:
        lines.append(text_table(rows, list(rows[0])))
    return "\n".join(lines)


# --- label-sim --------------------------------------------------------------------------------------------------------


def add_label_sim_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("label-sim", help="label a round's open pairs with a simulated annotator")
    p.add_argument("--judge", default="training.loop.judges:shorter", help="module:function of the judge")
    p.add_argument("--name", help="annotator name suffix (sim:<name>; default: the judge's function name)")
    p.add_argument("--round", type=int, help="round to label (default: any open pair)")
    p.add_argument("--noise", type=float, default=0.0, help="probability of flipping an a/b choice")
    p.add_argument("--limit", type=int, help="stop after this many judgments")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_label_sim)


def cmd_label_sim(args: argparse.Namespace) -> int:
    store = store_of(args)
    name = args.name or args.judge.partition(":")[2]
    result = label_with_judge(store, load_judge(args.judge, store), name, args.round, args.noise, args.limit, args.seed)
    print(f"sim:{name} judged {result.judged} pairs ({result.flipped} flipped by noise)")
    return 0


# --- loop-sim ---------------------------------------------------------------------------------------------------------


def add_loop_sim_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loop-sim", help="run the whole loop headless for N rounds with a simulated annotator and report"
    )
    add_arguments(p, LoopConfig)
    p.set_defaults(run=cmd_loop_sim)


def cmd_loop_sim(args: argparse.Namespace) -> int:
    run_loop(store_of(args), from_args(LoopConfig, args))
    return 0


def add_loop_plot_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("loop-plot", help="redraw the plot of a loop-sim JSON summary (docs/results/loop-*.json)")
    p.add_argument("summary", type=Path, help="loop-sim's <name>.json, or a loop sweep's JSON with --loop")
    p.add_argument("--loop", help="which loop of a sweep's JSON (its name, e.g. default--structured)")
    p.add_argument("--out", type=Path, help="PNG to write (default: next to the summary)")
    p.set_defaults(run=cmd_loop_plot)


def cmd_loop_plot(args: argparse.Namespace) -> int:
    print(plot_summary(args.summary, args.out, args.loop))
    return 0
