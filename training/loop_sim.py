"""The whole loop, headless, with a simulated annotator: generate → judge → export → train-dpo, round after round,
then evaluate every round's checkpoint and report whether the model improved under the judge.

    prefloop loop-sim --rounds 3 --judge training.judges:shorter
    make loop-sim ROUNDS=3 JUDGE=training.judges:contains_word NAME=please-loop
    prefloop loop-sim --name please-loop            # rerun: continues from the last finished stage

Round r generates `pairs_per_round` train pairs and `heldout_pairs` held-out pairs with round r's checkpoint; the
judge labels them as annotator sim:<judge>; the train pairs are exported and DPO continues round r's checkpoint,
which gives the checkpoint of round r + 1. After the last round every checkpoint is evaluated (`prefloop eval`:
held-out preference accuracy, KL to the base model, response length) and, on the same held-out prompts, each round's
samples compete with round 0's under the judge (win rate vs round 0; a/b order alternates so a judge's position
bias cancels). The table and a plot go to data/reports/<name>.md and .png.

Resumable: each finished stage is recorded in data/reports/<name>.state.json with what it produced; a rerun skips
finished stages, resumes an interrupted DPO run from its last trainer checkpoint, and generation only tops up.
Nothing here knows what the judge prefers: it is any `module:function` (see training/judges.py).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from store import Store, StoreError
from training.config import add_arguments, build, from_args, opt


@dataclass
class LoopConfig:
    name: str = opt("loop-sim", "run name: the state, report and checkpoints are kept under this name")
    rounds: int = opt(3, "labeling rounds, each followed by a DPO run (the table has rounds 0..rounds)")
    judge: str = opt("training.judges:shorter", "module:function of the simulated annotator")
    noise: float = opt(0.0, "probability that the simulated annotator flips an a/b choice")
    prompts_file: str = opt("store/seeds/prompts.jsonl", "prompts imported before round 0 (duplicates skipped)")
    pairs_per_round: int = opt(128, "train prompts per round; each gives one pair (two samples)")
    heldout_pairs: int = opt(16, "held-out prompts per round, judged, for held-out preference accuracy")
    max_new_tokens: int = opt(128, "token limit of every sampled response")
    temperature: float = opt(1.0, "sampling temperature of candidate generation")
    generate_batch_size: int = opt(32, "sequences generated together")
    dpo_config: str = opt("configs/dpo.yaml", "YAML of the DPO config (empty: defaults)")
    learning_rate: float = opt(5e-5, "DPO learning rate of the loop (one export per round, so the high end)")
    dpo_epochs: float = opt(2.0, "DPO passes over each round's export")
    beta: float = opt(0.1, "DPO beta")
    eval_prompts: int = opt(64, "held-out prompts sampled for KL, length and the win rate vs round 0")
    eval_batch_size: int = opt(32, "sequences scored or sampled together in evaluation")
    seed: int = opt(3407, "seed of generation, training and evaluation")
    report_dir: str = opt("data/reports", "where the state file, table and plot are written")


class LoopState:
    """Finished stages and what they produced, persisted after every stage."""

    def __init__(self, path: Path, config: LoopConfig):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"config": asdict(config), "stages": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str):
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result) -> None:
        self.data["stages"][stage] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)  # a crash leaves the old state or the new one, never half of it


def run_loop(store: Store, config: LoopConfig, log=print) -> list[dict]:
    from store.importers import import_file
    from training.judges import label_with_judge, load_judge
    from training.rounds import start_round

    judge = load_judge(config.judge)  # fail before any work when the judge spec is wrong
    judge_name = config.judge.partition(":")[2]
    report_dir = Path(config.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState(report_dir / f"{config.name}.state.json", config)

    if not state.done("import"):
        summary = import_file(store, Path(config.prompts_file), kind="prompts", source=Path(config.prompts_file).name)
        state.finish("import", {"inserted": summary.inserted, "duplicates": summary.duplicates})

    for r in range(config.rounds + 1):
        stage = f"round-{r}/start"
        if not state.done(stage):
            previous = state.get(f"round-{r - 1}/train") if r else None
            if r == 0:
                base_id = store.register_checkpoint("base", config_model())
                round_id, checkpoint = start_round(store, base_id)
            else:
                round_id, checkpoint = start_round(store, previous["checkpoint_id"])
            state.finish(stage, {"round": round_id, "checkpoint_id": checkpoint["id"]})
        round_id = state.get(stage)["round"]
        log(f"== round {r} (store round {round_id}, checkpoint {state.get(stage)['checkpoint_id']})")
        if r == config.rounds:
            break  # the last checkpoint is evaluated, not labeled

        for split, wanted in (("train", config.pairs_per_round), ("heldout", config.heldout_pairs)):
            stage = f"round-{r}/generate-{split}"
            if not state.done(stage) and wanted > 0:
                state.finish(stage, _generate(store, config, round_id, split, wanted))

        stage = f"round-{r}/judge"
        if not state.done(stage):
            result = label_with_judge(store, judge, judge_name, round_id, config.noise, seed=config.seed + r)
            log(f"sim:{judge_name} judged {result.judged} pairs")
            state.finish(stage, {"judged": result.judged, "flipped": result.flipped})

        stage = f"round-{r}/export"
        if not state.done(stage):
            from training.export import ExportConfig, export

            name = f"{config.name}-round-{r}"
            existing = {e["name"]: e for e in store.list_exports()}
            if name not in existing:  # an export registered before a crash is reused
                export(store, build(ExportConfig, None, {"name": name, "round": str(round_id)}))
            state.finish(stage, {"export": name})

        stage = f"round-{r}/train"
        if not state.done(stage):
            state.finish(stage, _train(store, config, r, state))

    stage = "eval"
    if not state.done(stage):
        state.finish(stage, _evaluate(store, config, state, judge, log))
    rows = report_rows(store, config, state)
    write_report(config, rows, report_dir, log)
    return rows


def config_model() -> str:
    from training.models import default_model

    return default_model()


def _generate(store: Store, config: LoopConfig, round_id: int, split: str, wanted: int) -> dict:
    from training.generate import GenerateConfig, generate

    used = store.prompts_used_in_round(round_id, "samples", split)
    missing = wanted - used
    if missing <= 0:
        return {"pairs": 0, "prompts_used": used}
    generate_config = build(
        GenerateConfig,
        None,
        dict(
            num_prompts=missing,
            samples_per_prompt=2,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.generate_batch_size,
            write_batch_size=config.generate_batch_size,
            seed=config.seed,
            round=round_id,
            split=split,
        ),
    )
    summary = generate(store, generate_config)
    return {"pairs": summary.pairs, "prompts_used": used + summary.prompts}


def _train(store: Store, config: LoopConfig, r: int, state: LoopState) -> dict:
    from training.dpo import DPOTrainConfig, train  # before transformers: Unsloth patches it on import

    output_dir = Path("checkpoints") / config.name / f"round-{r}" / "dpo"
    dpo_config = build(
        DPOTrainConfig,
        Path(config.dpo_config) if config.dpo_config else None,
        dict(
            export=state.get(f"round-{r}/export")["export"],
            parent=state.get(f"round-{r}/start")["checkpoint_id"],
            output_dir=str(output_dir),
            learning_rate=config.learning_rate,
            num_train_epochs=config.dpo_epochs,
            beta=config.beta,
            seed=config.seed,
        ),
    )
    resume = any(output_dir.glob("checkpoint-*"))  # an interrupted run left a trainer checkpoint to continue
    result = train(store, dpo_config, resume=resume, overwrite=not resume)
    return {"checkpoint_id": result.checkpoint_id, "metrics": result.metrics}


def _evaluate(store: Store, config: LoopConfig, state: LoopState, judge, log) -> dict:
    """`prefloop eval` over the loop's checkpoints, plus each round's win rate over round 0 under the judge."""
    from training.evaluate import EvalConfig, Evaluator, evaluate, spec_of
    from training.metrics import preference_outcome, win_rate

    eval_config = build(
        EvalConfig,
        None,
        dict(prompts=config.eval_prompts, max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size),
    )
    eval_config.seed = config.seed
    checkpoints = [store.get_checkpoint(state.get(f"round-{r}/start")["checkpoint_id"]) for r in range(config.rounds + 1)]
    evaluate(store, eval_config, checkpoints, log)

    evaluator = Evaluator(store, eval_config)
    if not evaluator.prompts:
        raise StoreError("no held-out prompts: the win rate vs round 0 needs some (import more prompts)")
    base_samples = evaluator.samples(spec_of(checkpoints[0]))
    win_rates = {}
    for r, checkpoint in enumerate(checkpoints[1:], start=1):
        outcomes = []
        for i, (new, old) in enumerate(zip(evaluator.samples(spec_of(checkpoint)), base_samples)):
            messages = evaluator.prompts[new.prompt_index]["messages"]
            new_side = "a" if i % 2 == 0 else "b"  # alternate positions: a judge's position bias cancels out
            a, b = (new.text, old.text) if new_side == "a" else (old.text, new.text)
            choice, _ = judge(messages, a, b)
            outcomes.append(preference_outcome(choice, new_side))
        row = win_rate(outcomes, eval_config.seed, eval_config.bootstrap).row(
            "judge_win_rate_vs_round0", judge=config.judge, round0_checkpoint=checkpoints[0]["id"]
        )
        store.add_eval_results(checkpoint["id"], state.get(f"round-{r}/start")["round"], [row])
        win_rates[r] = row
        log(f"round {r} vs round 0 under {config.judge}: {row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
    return {"win_rates": win_rates}


TABLE_METRICS = [
    ("heldout_acc_dpo", "held-out accuracy (DPO reward)"),
    ("heldout_acc_lnlp", "held-out accuracy (log-prob)"),
    ("judge_win_rate_vs_round0", "win rate vs round 0 (judge)"),
    ("kl_to_base", "KL to base (nats/response)"),
    ("response_length", "length (tokens)"),
]


def report_rows(store: Store, config: LoopConfig, state: LoopState) -> list[dict]:
    results = store.list_eval_results()
    rows = []
    for r in range(config.rounds + 1):
        checkpoint_id = state.get(f"round-{r}/start")["checkpoint_id"]
        row = {"round": r, "checkpoint": checkpoint_id}
        for metric, _ in TABLE_METRICS:
            found = [x for x in results if x["checkpoint_id"] == checkpoint_id and x["metric"] == metric]
            row[metric] = found[-1] if found else None
        rows.append(row)
    return rows


def _cell(result: dict | None) -> str:
    if result is None or result["value"] is None:
        return "–"
    if result["ci_low"] is None:
        return f"{result['value']:.3f}"
    return f"{result['value']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}]"


def format_table(rows: list[dict]) -> str:
    header = "| round | checkpoint | " + " | ".join(title for _, title in TABLE_METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(TABLE_METRICS) + 2)]
    for row in rows:
        cells = [_cell(row[metric]) for metric, _ in TABLE_METRICS]
        lines.append(f"| {row['round']} | {row['checkpoint']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(config: LoopConfig, rows: list[dict], report_dir: Path, log=print) -> None:
    table = format_table(rows)
    log(table)
    (report_dir / f"{config.name}.md").write_text(
        f"# {config.name}\n\nJudge `{config.judge}`, noise {config.noise}, {config.rounds} rounds of "
        f"{config.pairs_per_round} train pairs. 95% bootstrap intervals in brackets.\n\n{table}\n"
    )
    _plot(rows, report_dir / f"{config.name}.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        (("heldout_acc_dpo", "heldout_acc_lnlp", "judge_win_rate_vs_round0"), "share", axes[0]),
        (("kl_to_base",), "nats per response", axes[1]),
        (("response_length",), "tokens", axes[2]),
    ]
    titles = dict(TABLE_METRICS)
    for metrics, unit, ax in panels:
        for metric in metrics:
            points = [(row["round"], row[metric]) for row in rows if row[metric] and row[metric]["value"] is not None]
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1]["value"] for p in points]
            ax.plot(xs, ys, marker="o", label=titles[metric])
            lows = [p[1]["ci_low"] if p[1]["ci_low"] is not None else p[1]["value"] for p in points]
            highs = [p[1]["ci_high"] if p[1]["ci_high"] is not None else p[1]["value"] for p in points]
            ax.fill_between(xs, lows, highs, alpha=0.2)
        ax.set_xlabel("round")
        ax.set_ylabel(unit)
        ax.set_xticks([row["round"] for row in rows])
        ax.legend(fontsize=7)
    axes[0].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loop-sim", help="run the whole loop headless for N rounds with a simulated annotator and report"
    )
    add_arguments(p, LoopConfig)
    p.set_defaults(run=cmd_loop_sim)


def cmd_loop_sim(args: argparse.Namespace) -> int:
    from training.cli import open_store

    run_loop(open_store(args), from_args(LoopConfig, args))
    return 0
