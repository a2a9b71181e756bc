"""loop-sim's report: one row per round of the stored evaluation results, as a Markdown table, a plot and a JSON
summary (data/reports/<name>.md, .png, .json).

    prefloop loop-plot docs/results/loop-shorter.json            # redraw a summary's plot (next to it, .png)
    prefloop loop-plot docs/results/loop-sweep-p256.json --loop p256--structured --out docs/loop-structured.png

The JSON holds what docs/results/loop-<judge>.json records: judge, noise, rounds, the last round's win rate over
round 0 as {value, low, high, n}, every round's figures, the DPO runs' training metrics and each stage's wall time.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.metrics import Estimate, describe_win_rate, format_estimate

TABLE_METRICS = [
    ("judge_win_rate_vs_round0", "win rate vs round 0 (judge)"),
    ("judge_win_rate_vs_previous", "win rate vs previous round (judge)"),
    ("heldout_accuracy", "held-out preference accuracy"),
    ("heldout_accuracy_per_token", "held-out accuracy per token"),
    ("heldout_accuracy_vs_reference", "held-out accuracy vs the round's reference"),
    ("reward_accuracy", "reward-model accuracy (labels so far)"),
    ("kl_to_base", "KL to base (nats/response)"),
    ("response_length", "length (tokens)"),
]


def report_rows(store, state, last: int) -> list[dict]:
    """Per round 0..last: its checkpoint and the newest stored result of each table metric (None where there is
    none); the reward-model accuracy is that of the reward model trained on the labels of the rounds before."""
    results = store.list_eval_results()
    rows = []
    for r in range(last + 1):
        checkpoint_id = state.get(f"round-{r}/start")["checkpoint_id"]
        reward = state.reward_model_for(r)
        row = {"round": r, "checkpoint": checkpoint_id}
        for metric, _ in TABLE_METRICS:
            owner = (reward or {}).get("checkpoint_id") if metric == "reward_accuracy" else checkpoint_id
            found = [x for x in results if x["checkpoint_id"] == owner and x["metric"] == metric]
            row[metric] = found[-1] if found else None
        rows.append(row)
    return rows


def _cell(result: dict | None) -> str:
    if result is None:
        return "–"
    return format_estimate(Estimate(result["value"], result["ci_low"], result["ci_high"], result["n"]))


def format_table(rows: list[dict]) -> str:
    """One row per round; a metric no round has (the reward model's, in a loop without one) gets no column."""
    metrics = [(metric, title) for metric, title in TABLE_METRICS if any(row[metric] for row in rows)]
    header = "| round | checkpoint | " + " | ".join(title for _, title in metrics) + " |"
    lines = [header, "|" + " --- |" * (len(metrics) + 2)]
    for row in rows:
        cells = [_cell(row[metric]) for metric, _ in metrics]
        lines.append(f"| {row['round']} | {row['checkpoint']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Held-out accuracy split by which answer of a pair the judge preferred (same-length pairs left out; each cell's n says
# how many pairs it holds).
LENGTH_SIDES = [("chosen_longer", "the longer"), ("chosen_shorter", "the shorter")]


def format_length_table(rows: list[dict]) -> str:
    """Held-out accuracy (summed and per token) on the pairs whose preferred answer is the longer one and on those
    where it is the shorter one, per round; empty when no result holds the split. Far from the base model every
    token's log-ratio drifts, so the summed implicit reward also ranks by length: under a judge whose preferred
    answers are mostly the longer ones its accuracy can fall while the win rate rises (docs/loop.md)."""
    def split(row, metric, side):  # the part as a stored result (value, ci_low, ci_high, n), or None
        return ((row[metric] or {}).get("details") or {}).get("by_length", {}).get(side)

    columns = [(metric, side, f"{form}, preferred answer {title}")
               for metric, form in (("heldout_accuracy", "summed"), ("heldout_accuracy_per_token", "per token"))
               for side, title in LENGTH_SIDES]
    if not any(split(row, metric, side) for row in rows for metric, side, _ in columns):
        return ""
    lines = ["| round | " + " | ".join(title for *_, title in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        lines.append(f"| {row['round']} | " + " | ".join(_cell(split(row, m, s)) for m, s, _ in columns) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """In words: did the last round beat round 0 and the round before it under the judge?"""
    last, sentences = rows[-1], []
    for metric, other in (("judge_win_rate_vs_round0", "round 0"), ("judge_win_rate_vs_previous", "the round before")):
        result = last.get(metric)
        if result is not None:
            estimate = Estimate(result["value"], result["ci_low"], result["ci_high"], result["n"])
            sentences.append(describe_win_rate(estimate, f"Round {last['round']}", other))
    return " ".join(sentences) or "No win rate yet."


def summary(config, state, rows: list[dict], stopped: str | None = None, evaluating_to: int | None = None) -> dict:
    def interval(result):
        if result is None:
            return None
        return {"value": result["value"], "low": result["ci_low"], "high": result["ci_high"], "n": result["n"]}

    # Store round -> loop round, for held-out accuracy on the pairs each loop round generated.
    starts = {r: state.get(f"round-{r}/start") for r in range(config.rounds)}
    loop_round = {start["round"]: r for r, start in starts.items() if start}

    def details(result) -> dict:
        return (result or {}).get("details", {})

    def accuracy_by_pair_round(result):
        return {str(loop_round.get(int(store_round), f"store {store_round}")): interval(estimate)
                for store_round, estimate in details(result).get("by_pair_round", {}).items()}

    def accuracy_by_length(result):
        return {side: interval(estimate) for side, estimate in details(result).get("by_length", {}).items()}

    last = rows[-1]
    return {
        "name": config.name,
        "judge": config.judge,
        "noise": config.noise,
        "rounds": config.rounds,
        "rounds_evaluated": last["round"],
        "partial": evaluating_to is not None,  # the evaluation was still under way: later rounds are missing
        "stopped": stopped,
        "win_rate_vs_round0": interval(last["judge_win_rate_vs_round0"]),
        "win_rate_vs_previous": interval(last["judge_win_rate_vs_previous"]),
        "verdict": verdict(rows),
        "per_round": [
            {"round": row["round"], "checkpoint": row["checkpoint"]}
            | {metric: interval(row[metric]) for metric, _ in TABLE_METRICS}
            | {"heldout_accuracy_by_pair_round": accuracy_by_pair_round(row["heldout_accuracy"]),
               "heldout_accuracy_by_length": accuracy_by_length(row["heldout_accuracy"]),
               "heldout_accuracy_per_token_by_length": accuracy_by_length(row["heldout_accuracy_per_token"]),
               "heldout_accuracy_vs_reference_by_length": accuracy_by_length(row["heldout_accuracy_vs_reference"])}
            for row in rows
        ],
        "training": {
            r: state.get(f"round-{r}/train")["metrics"]
            for r in range(config.rounds)
            if state.get(f"round-{r}/train")
        },
        "reward_models": {
            r: state.get(f"round-{r}/reward") for r in range(config.rounds) if state.get(f"round-{r}/reward")
        },
        "health": {r: state.get(f"round-{r}/health") for r in range(config.rounds) if state.get(f"round-{r}/health")},
        "seconds": state.seconds,
        "config": state.data["config"],
    }


def write_report(
    config, state, rows: list[dict], report_dir: Path, log=print, stopped: str | None = None,
    evaluating_to: int | None = None,
) -> None:
    """The table, plot and JSON summary of the rounds in `rows`; `stopped` is why the loop ended early, if it did;
    `evaluating_to` the last round of an evaluation still under way (the report so far)."""
    table = format_table(rows)
    log(table)
    log(verdict(rows))
    total = sum(state.seconds.values())
    ending = f"\n**Stopped after round {rows[-1]['round']}:** {stopped}\n" if stopped else ""
    if evaluating_to is not None:
        ending += (f"\n**So far:** rounds 0 to {rows[-1]['round']} of 0 to {evaluating_to} are evaluated. A rerun "
                   f"of the same loop-sim command goes on with the rest.\n")
    length_table = format_length_table(rows)
    length_section = (
        "\nHeld-out preference accuracy by which answer the judge preferred. Far from the base model the summed "
        "log-ratio also ranks by length: a column that falls while the other rises is that drift, not the judge's "
        f"property.\n\n{length_table}\n"
    ) if length_table else ""
    (report_dir / f"{config.name}.md").write_text(
        f"# {config.name}\n\nJudge `{config.judge}`, noise {config.noise}, {config.rounds} rounds of "
        f"{config.pairs_per_round} train pairs. 95% bootstrap intervals (by prompt for the sample-based figures) in "
        f"brackets, n = the pairs or responses behind each figure. Stages took {total:.0f} s.\n\n{table}\n\n"
        f"{verdict(rows)}\n{length_section}{ending}"
    )
    (report_dir / f"{config.name}.json").write_text(
        json.dumps(summary(config, state, rows, stopped, evaluating_to), indent=2, default=str)
    )
    plot(rows, report_dir / f"{config.name}.png", f"{config.name}: judge {config.judge}, noise {config.noise}")


def rows_from_summary(summary: dict) -> list[dict]:
    """The report rows a JSON summary was written from (its table metrics, as stored results), to redraw its plot."""
    def result(interval):
        if interval is None:
            return None
        return {"value": interval["value"], "ci_low": interval["low"], "ci_high": interval["high"], "n": interval["n"]}

    return [{"round": r["round"], "checkpoint": r["checkpoint"]}
            | {metric: result(r.get(metric)) for metric, _ in TABLE_METRICS} for r in summary["per_round"]]


def plot_summary(path: Path, out: Path | None = None, loop: str | None = None) -> Path:
    """Redraw the plot of a loop-sim JSON summary, or of the loop named `loop` in a sweep's JSON (bench/loop_sweep.py
    writes one summary per loop name)."""
    data = json.loads(path.read_text())
    if "per_round" not in data:
        if loop not in data:
            raise SystemExit(f"{path}: a sweep's summaries; name one with --loop ({', '.join(sorted(data))})")
        data = data[loop]
    out = out or path.with_name(f"{loop or path.stem}.png")
    plot(rows_from_summary(data), out, f"{data['name']}: judge {data['judge']}, noise {data['noise']}")
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    panels = [
        (("judge_win_rate_vs_round0", "judge_win_rate_vs_previous"), "win rate", axes[0]),
        (("heldout_accuracy", "heldout_accuracy_per_token", "heldout_accuracy_vs_reference", "reward_accuracy"),
         "held-out accuracy", axes[1]),
        (("kl_to_base",), "nats per response", axes[2]),
        (("response_length",), "tokens", axes[3]),
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
        if ax.lines:  # a panel with nothing measured (no reward model, no win rate yet) gets no empty legend
            ax.legend(fontsize=7)
    for ax in axes[:2]:
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
