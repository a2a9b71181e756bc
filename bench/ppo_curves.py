"""Plot a PPO run's curves (reward, KL, response length, EOS share) from the history.json train-ppo writes.

    .venv/bin/python bench/ppo_curves.py checkpoints/round-0/ppo/history.json docs/ppo-h100.png
    .venv/bin/python bench/ppo_curves.py lr1=a/history.json lr2=b/history.json both.png --smooth 10

Prints a markdown table of every tenth update (and the last) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = [
    ("reward/score", "reward-model score (mean per rollout)"),
    ("kl", "KL to the reference (nats per response)"),
    ("response/length", "response length (tokens)"),
    ("response/eos_fraction", "share of responses that end with EOS"),
]


def rolling_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to `window - 1` before it (NaN gaps skipped)."""
    out = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(seen) / len(seen) if seen else float("nan"))
    return out


def plot(histories: dict[str, list[dict]], path: Path, panels=PANELS, x: str = "update", xlabel: str = "PPO update",
         smooth: int = 1) -> None:
    """One panel per (key, title) of `panels` against `x`, one line per labelled history; entries without a key (a
    stopped run) leave a gap. With smooth > 1 each step is a faint dot and the line its `smooth`-step rolling mean
    (one step of a few completions is noisy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for label, history in histories.items():
            steps = [h[x] for h in history]
            values = [h.get(key, float("nan")) for h in history]
            if smooth > 1:
                dots = ax.plot(steps, values, ".", alpha=0.25, markersize=3)
                ax.plot(steps, rolling_mean(values, smooth), linewidth=1.5, color=dots[0].get_color(), label=label)
            else:
                ax.plot(steps, values, marker=".", linewidth=1, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if len(histories) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(history: list[dict], keys: list[str] | None = None, x: str = "update", every: int = 10) -> str:
    """A markdown table of every `every`-th entry (and the last)."""
    keys = keys or [key for key, _ in PANELS] + ["policy/clipfrac", "policy/approx_kl", "value/explained_variance"]
    rows = [h for i, h in enumerate(history) if i % every == 0 or i == len(history) - 1]
    lines = [f"| {x} | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    lines += [f"| {h[x]} | " + " | ".join(f"{h.get(k, float('nan')):.3f}" for k in keys) + " |" for h in rows]
    return "\n".join(lines)


def main(doc: str = __doc__, panels=PANELS, x: str = "update", xlabel: str = "PPO update", keys=None) -> None:
    """The command line: one or more runs' history.json (LABEL=PATH names a line; else the path) and the figure to
    write; each run's table goes to stdout."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("history", nargs="+", help="a run's history.json, or LABEL=PATH")
    parser.add_argument("png", type=Path, help="where to write the figure")
    parser.add_argument("--smooth", type=int, default=1, help="draw each step's dot and this many steps' rolling mean")
    args = parser.parse_args()
    histories = {}
    for spec in args.history:
        label, _, path = spec.rpartition("=")
        histories[label or path] = json.loads(Path(path).read_text())
    plot(histories, args.png, panels, x, xlabel, args.smooth)
    for label, history in histories.items():
        print(f"{label}\n\n{table(history, keys, x)}\n")


if __name__ == "__main__":
    main()
