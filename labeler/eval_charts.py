"""The dashboard's evaluation section: is each round better, can the labels be trusted, how did training go.

    from labeler.eval_charts import render_eval_section
    render_eval_section(store)      # inside a Streamlit page

Everything is drawn from the store (eval results written by `prefloop eval`, judgments, training runs) and from the
TensorBoard event files training writes under each run's output directory. Each part says what to run when it has
no data yet, so the section works on an empty database.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from labeler.render import plain
from store import Store
from training.metrics import Estimate, describe_win_rate, label_quality, result_rows

METRIC_LABELS = {
    "judge_win_rate_vs_round0": "win rate vs round 0 (simulated judge)",
    "judge_win_rate_vs_previous": "win rate vs previous round (simulated judge)",
    "win_rate_vs_previous": "win rate vs previous round",
    "heldout_accuracy": "held-out preference accuracy (implicit reward vs base)",
    "heldout_accuracy_per_token": "held-out preference accuracy per token (length-normalised implicit reward)",
    "heldout_accuracy_vs_reference": "held-out preference accuracy vs the round's reference (DPO's own reward)",
    "heldout_accuracy_chosen_longer": "held-out accuracy (summed), pairs whose preferred answer is the longer",
    "heldout_accuracy_chosen_shorter": "held-out accuracy (summed), pairs whose preferred answer is the shorter",
    "reward_accuracy": "reward-model accuracy",
    "kl_to_base": "KL to base (nats per response)",
    "response_length": "mean response length (tokens)",
    "heldout_reward": "mean reward-model score of held-out samples",
}
# Measured in docs/loop.md: under judges that decide few pairs, the win rate rose to 0.76 while the accuracy fell.
ACCURACY_CAVEAT = (
    "Held-out accuracy orders the judged held-out pairs by each model's implicit reward against the base model. Tens "
    "of nats from the base model it can stall or fall while the win rate rises: the win rate says whether answers "
    "got better, the accuracy whether the model ranks old pairs as the annotators did. Against the round's reference "
    "(the model its DPO was pulled towards: the previous round) it is DPO's own reward, a round's distance away."
)
LENGTH_SPLIT_CAVEAT = (
    "The summed accuracy on two parts of the held-out pairs: those whose preferred answer is the longer one, and those "
    "where it is the shorter one. Far from the base model the summed implicit reward also ranks by length. When one "
    "line falls while the other rises, that drift moves the overall figure, not the labels."
)
# The evaluation's split of held-out accuracy (its by_length details), drawn as metrics of their own.
LENGTH_SPLIT = {"chosen_longer": "heldout_accuracy_chosen_longer", "chosen_shorter": "heldout_accuracy_chosen_shorter"}
# Whether the newest round improved on the one before: the first of these its checkpoint has.
WIN_RATES_VS_PREVIOUS = ("win_rate_vs_previous", "judge_win_rate_vs_previous")


def eval_frame(store: Store) -> pd.DataFrame:
    """One row per stored metric with the checkpoint's kind and a series name (metric · kind) to draw it by, and a row
    for each part of a held-out accuracy's split by length (LENGTH_SPLIT)."""
    results = store.list_eval_results()
    flat = result_rows(results)
    rows = [row for row in flat if row["value"] is not None]
    rows += [
        dict(row, metric=LENGTH_SPLIT[side], **{k: part[k] for k in ("value", "ci_low", "ci_high", "n")})
        for result, row in zip(results, flat)
        if result["metric"] == "heldout_accuracy"
        for side, part in result["details"].get("by_length", {}).items()
        if side in LENGTH_SPLIT and part["value"] is not None
    ]
    frame = pd.DataFrame(
        rows, columns=["round", "checkpoint", "kind", "metric", "value", "ci_low", "ci_high", "n", "source"]
    )
    frame["series"] = frame["metric"].map(lambda m: METRIC_LABELS.get(m, m)) + " · " + frame["kind"]
    return frame


def rounds_chart(frame: pd.DataFrame, title: str, reference: float | None = None) -> alt.Chart:
    """Value per round as lines with points, and the 95% confidence interval as a band around each line."""
    x = alt.X("round:Q", title="round", axis=alt.Axis(tickMinStep=1, format="d"))
    # labelLimit 0: series names differ only at their end ("... · base", "... · dpo"), so none is cut short.
    color = alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=0))
    tooltip = ["round", "checkpoint", "kind", "metric", alt.Tooltip("value", format=".3f"),
               alt.Tooltip("ci_low", format=".3f"), alt.Tooltip("ci_high", format=".3f"), "n", "source"]
    base = alt.Chart(frame)
    band = base.mark_area(opacity=0.2).encode(x=x, y=alt.Y("ci_low:Q", title=None), y2="ci_high:Q", color=color)
    # A single round has no line to band around: the interval is drawn as an error bar as well.
    bars = base.mark_errorbar(ticks=True).encode(x=x, y=alt.Y("ci_low:Q", title=None), y2="ci_high:Q", color=color)
    line = base.mark_line(point=True).encode(x=x, y=alt.Y("value:Q", title=None), color=color, tooltip=tooltip)
    layers = [band, bars, line]
    if reference is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [reference]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q"))
    # fit-x: the plot is 280 px high and the legend below it adds to that (Streamlit's default, fit, squeezes the
    # plot to make room for the legend, down to a sliver for three series).
    return alt.layer(*layers).properties(title=title, height=280, autosize=alt.AutoSizeParams(type="fit-x",
                                                                                              contains="padding"))


def model_quality(store: Store) -> None:
    st.subheader("Model quality over rounds")
    frame = eval_frame(store)
    if frame.empty:
        st.info("No evaluation results yet: run `make eval` (or `prefloop eval --all`) after training a checkpoint.")
        return
    st.markdown(last_round_verdict(frame))
    charts = [
        (["heldout_accuracy", "heldout_accuracy_per_token", "heldout_accuracy_vs_reference", *WIN_RATES_VS_PREVIOUS,
          "judge_win_rate_vs_round0"],
         "Held-out accuracy and win rate", 0.5, ACCURACY_CAVEAT),
        (list(LENGTH_SPLIT.values()), "Held-out accuracy (summed) by which answer was preferred", 0.5,
         LENGTH_SPLIT_CAVEAT),
        (["reward_accuracy"], "Reward-model accuracy on held-out pairs", 0.5, None),
        (["kl_to_base"], "KL to the base model", None, None),
        (["response_length"], "Mean response length (length hacking shows here)", None, None),
        (["heldout_reward"], "Reward-model score of each policy's held-out samples (what RL raises)", None, None),
    ]
    left, right = st.columns(2)
    for i, (metrics, title, reference, caveat) in enumerate(charts):
        part = frame[frame["metric"].isin(metrics)]
        with left if i % 2 == 0 else right:
            if part.empty:
                st.caption(f"{title}: no results yet")
            else:
                st.altair_chart(rounds_chart(part, title, reference), width="stretch")
                if caveat:
                    st.caption(caveat)
    with st.expander("All results"):
        st.dataframe(frame.drop(columns="series"), hide_index=True)


def last_round_verdict(frame: pd.DataFrame) -> str:
    """In words, for the lead: did the newest evaluated round beat the one before it?"""
    policies = frame[frame["kind"] != "reward"]
    if policies.empty:
        return "No policy checkpoint evaluated yet."
    last = policies["round"].max()
    if last == 0:
        return "Only round 0 (the base model) is evaluated: a win rate needs a trained round."
    for metric in WIN_RATES_VS_PREVIOUS:
        rows = policies[(policies["round"] == last) & (policies["metric"] == metric)]
        if not rows.empty:
            row = rows.iloc[-1]
            estimate = Estimate(row["value"], row["ci_low"], row["ci_high"], int(row["n"]))
            source = f" (judged by {row['source'].replace('_', ' ')})" if row["source"] else ""
            return describe_win_rate(estimate, f"Round {last}", f"round {last - 1}") + source
    return (f"Round {last} has no win rate over round {last - 1} yet: judge vs-previous pairs "
            "(`prefloop generate --strategy vs-previous --split heldout`) or train a reward model, then `make eval`.")


def _estimate_cell(estimate: Estimate) -> float | None:
    return None if estimate.value is None else round(estimate.value, 3)


def _interval_cell(estimate: Estimate) -> str:
    if estimate.ci_low is None:
        return ""
    return f"[{estimate.ci_low:.2f}, {estimate.ci_high:.2f}] n={estimate.n}"


def label_quality_section(store: Store) -> None:
    st.subheader("Label quality")
    rows = store.label_rows()
    if not rows:
        st.info("No judgments yet: agreement and bias appear once annotators have labeled pairs.")
        return
    quality = label_quality(rows)
    with st.container(horizontal=True):
        for name, key, help_text in (
            ("Cohen's kappa", "kappa", "first two judgments of each pair judged at least twice"),
            ("Krippendorff's alpha", "alpha", "nominal (a, b, tie, both bad), all judgments"),
        ):
            estimate = quality[key]
            value = "—" if estimate.value is None else f"{estimate.value:.2f}"
            st.metric(name, value, help=f"{help_text}; 95% CI {_interval_cell(estimate) or 'n/a'}", border=True)
    table = pd.DataFrame(
        [
            {
                "annotator": a["annotator"],
                "judgments": a["count"],
                "median seconds": a["median_seconds"],
                **{
                    label: _estimate_cell(a[key])
                    for key, label in (
                        ("agreement", "agreement with majority"),
                        ("left_rate", "left-choice rate"),
                        ("longer_rate", "longer-wins rate"),
                        ("gold_accuracy", "gold accuracy"),
                    )
                },
                "agreement CI": _interval_cell(a["agreement"]),
                "left-choice CI": _interval_cell(a["left_rate"]),
                "longer-wins CI": _interval_cell(a["longer_rate"]),
                "gold CI": _interval_cell(a["gold_accuracy"]),
            }
            for a in quality["annotators"]
        ]
    )
    st.caption(
        "Agreement: with the majority of the pair's other annotators. Left-choice and longer-wins rates count decided "
        "judgments (a or b); 0.5 means no position or length bias. Gold accuracy: on pairs with a known answer."
    )
    st.dataframe(table, hide_index=True)
    per_day = pd.DataFrame(rows)
    per_day["day"] = pd.to_datetime(per_day["updated_at"]).dt.floor("D")
    counts = per_day.groupby(["day", "annotator"]).size().reset_index(name="judgments")
    st.altair_chart(
        alt.Chart(counts)
        .mark_bar()
        .encode(
            x=alt.X("yearmonthdate(day):O", title="day (UTC)"),
            y=alt.Y("judgments:Q", stack=True),
            color=alt.Color("annotator:N"),
            tooltip=["day:T", "annotator", "judgments"],
        )
        .properties(title="Judgments per day by annotator", height=240),
        width="stretch",
    )


def tensorboard_scalars(directory: str | Path) -> pd.DataFrame:
    """Every scalar in the TensorBoard event files under `directory` (any depth): columns tag, step, value, file."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    rows = []
    for path in sorted(Path(directory).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            rows += [dict(tag=tag, step=e.step, value=e.value, file=path.name) for e in accumulator.Scalars(tag)]
    return pd.DataFrame(rows, columns=["tag", "step", "value", "file"])


def training_runs_section(store: Store) -> None:
    st.subheader("Training runs")
    runs = store.list_training_runs()
    if not runs:
        st.info("No training runs yet: `make train-sft`, `make train-rm` or `make train-dpo` record theirs here.")
        return
    st.dataframe(
        pd.DataFrame(
            [
                dict(
                    run=r["id"], kind=r["kind"], round=r["round_id"], status=r["status"],
                    checkpoint=r["checkpoint_id"], started=r["started_at"], finished=r["finished_at"],
                    error=r["error"], output_dir=r["output_dir"],
                )
                for r in runs
            ]
        ),
        hide_index=True,
    )
    by_id = {r["id"]: r for r in runs}
    run_id = st.selectbox(
        "Run to plot",
        list(reversed(by_id)),
        format_func=lambda i: f"run {i} · {by_id[i]['kind']} · round {by_id[i]['round_id']} · {by_id[i]['status']}",
    )
    run = by_id[run_id]
    if run["metrics"]:
        st.caption("Summary metrics")
        st.dataframe(
            pd.DataFrame([{"metric": k, "value": str(v)} for k, v in sorted(run["metrics"].items())]), hide_index=True
        )
    scalars = tensorboard_scalars(run["output_dir"]) if Path(run["output_dir"]).is_dir() else pd.DataFrame()
    if scalars.empty:
        st.caption(f"No TensorBoard curves under {plain(run['output_dir'])}.")
        return
    tags = sorted(scalars["tag"].unique())
    preferred = [t for t in tags if any(k in t for k in ("loss", "accurac", "reward", "kl"))] or tags
    chosen = st.multiselect("Curves", tags, default=preferred[:6])
    if chosen:
        st.altair_chart(
            alt.Chart(scalars[scalars["tag"].isin(chosen)])
            .mark_line()
            .encode(x="step:Q", y=alt.Y("value:Q", title=None), tooltip=["tag", "step", "value"])
            .properties(width=260, height=180)
            .facet(facet=alt.Facet("tag:N", title=None), columns=3)
            .resolve_scale(y="independent"),
        )


def render_eval_section(store: Store) -> None:
    """Model quality over rounds, label quality, and training runs with their curves."""
    model_quality(store)
    label_quality_section(store)
    training_runs_section(store)
