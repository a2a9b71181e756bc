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


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    updates = [h["update"] for h in history]
    for ax, (key, title) in zip(axes, PANELS):
        ax.plot(updates, [h[key] for h in history], marker=".", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(history: list[dict], every: int = 10) -> str:
    keys = [key for key, _ in PANELS] + ["policy/clipfrac", "policy/approx_kl", "value/explained_variance"]
    rows = [h for i, h in enumerate(history) if i % every == 0 or i == len(history) - 1]
    lines = ["| update | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    lines += [f"| {h['update']} | " + " | ".join(f"{h[k]:.3f}" for k in keys) + " |" for h in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", type=Path, help="history.json of a train-ppo run")
    parser.add_argument("png", type=Path, help="where to write the figure")
    args = parser.parse_args()
    history = json.loads(args.history.read_text())
    plot(history, args.png)
    print(table(history))


if __name__ == "__main__":
    main()
