"""Plot an RLOO run's curves (reward-model score, KL, completion length, share cut at the length limit) from the
history.json train-rloo writes, with bench/ppo_curves.py's plotting.

    .venv/bin/python bench/rloo_curves.py checkpoints/round-0/rloo/history.json docs/rloo-h100.png
    .venv/bin/python bench/rloo_curves.py lr2e-4=a/history.json lr5e-4=b/history.json docs/rloo-h200.png --smooth 10

Prints a markdown table of every tenth step (and the last) for docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ppo_curves import main  # noqa: E402

PANELS = [
    ("reward_model_score", "reward-model score (mean per step)"),
    ("kl", "KL to the reference (nats per token)"),
    ("completion_length", "completion length (tokens)"),
    ("clipped_ratio", "share cut at max_new_tokens (no EOS)"),
]


if __name__ == "__main__":
    main(__doc__, PANELS, "step", "RLOO step", [key for key, _ in PANELS] + ["reward", "entropy", "grad_norm"])
