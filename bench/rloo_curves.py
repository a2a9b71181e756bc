"""Plot an RLOO run's curves (reward-model score, KL, completion length, share cut at the length limit) from the
history.json train-rloo writes, with bench/ppo_curves.py's plotting.

    .venv/bin/python bench/rloo_curves.py checkpoints/round-0/rloo/history.json docs/rloo-h100.png

Prints a markdown table of every tenth step (and the last) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ppo_curves import plot, table  # noqa: E402

PANELS = [
    ("reward_model_score", "reward-model score (mean per step)"),
    ("kl", "KL to the reference (nats per token)"),
    ("completion_length", "completion length (tokens)"),
    ("clipped_ratio", "share cut at max_new_tokens (no EOS)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", type=Path, help="history.json of a train-rloo run")
    parser.add_argument("png", type=Path, help="where to write the figure")
    args = parser.parse_args()
    history = json.loads(args.history.read_text())
    plot(history, args.png, PANELS, x="step", xlabel="RLOO step")
    print(table(history, [key for key, _ in PANELS] + ["reward", "entropy", "grad_norm"], x="step"))


if __name__ == "__main__":
    main()
