"""Plot a PPO run's curves (reward, KL, response length, EOS share) from the history.json train-ppo writes.

    .venv/bin/python bench/ppo_curves.py checkpoints/round-0/ppo/history.json docs/ppo-h100.png

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


def plot(history: list[dict], path: Path, panels=PANELS, x: str = "update", xlabel: str = "PPO update") -> None:
    """One panel per (key, title) of `panels` against `x`; entries without a key (a stopped run) leave a gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    steps = [h[x] for h in history]
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], marker=".", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
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
    """The command line: a run's history.json and the figure to write; the table goes to stdout."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("history", type=Path, help="the run's history.json")
    parser.add_argument("png", type=Path, help="where to write the figure")
    args = parser.parse_args()
    history = json.loads(args.history.read_text())
    plot(history, args.png, panels, x, xlabel)
    print(table(history, keys, x))


if __name__ == "__main__":
    main()
