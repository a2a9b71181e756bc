"""Which two of a prompt's k samples an annotator is shown: the pair most worth a judgment.

    prefloop generate --samples-per-prompt 4 --pair-selection auto

Strategies (`--pair-selection`):
  most-different    the two samples whose words overlap least (Dice distance over word counts, so a short answer
                    against a long one is far apart too): without a reward model, the pair a judgment most likely
                    separates. The default when no reward model is registered.
  reward-extremes   the newest reward model's highest- against its lowest-scored sample: the online iterative DPO
                    recipe's best-vs-worst pair, whose label the policy learns most from. The default with one.
  reward-uncertain  the two samples the reward model scores closest: where it is least sure, which is where a
                    human label teaches the reward model most.
  implicit-extremes the highest against the lowest DPO implicit reward, log pi(y|x) - log pi_ref(y|x), of the round's
                    own checkpoint against its DPO reference: the preferences the labels taught so far rank the
                    samples (as in DICE, Chen et al. 2024), with no reward model to train. Only for a checkpoint
                    trained by DPO.
  auto              for train pairs: reward-extremes with a registered reward model; else implicit-extremes when
                    the round's checkpoint was trained by DPO; else most-different (the base model's round). For
                    held-out pairs always most-different: they measure the models (held-out accuracy of the policy
                    and of the reward model), so no model's scores may pick them (a checkpoint would be scored on the
                    very pairs it ranked as its own extremes).

Whatever the strategy, a pair never holds an empty response, two identical texts (compared after strip) or two
responses both cut off at the token limit (a judge has nothing to prefer between two unfinished answers), and it holds
a cut-off response only when the prompt has no two finished ones to show: a preferred answer that was cut off cannot
be trained on (export drops it, training/loop/export.py says why), so such a label would be wasted. A prompt whose
samples allow no pair gets none. Which sample is stored as response a is a coin flip seeded per prompt,
so the side a selection favours is random (the labeler shuffles the sides on screen again, per annotator).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from training.engine.sampling import Sample

SELECTIONS = ("auto", "most-different", "reward-extremes", "reward-uncertain", "implicit-extremes")
REWARD_SELECTIONS = ("reward-extremes", "reward-uncertain")
_WORD = re.compile(r"\w+|[^\w\s]")


def choose_selection(
    requested: str, have_reward_model: bool, trained_by_dpo: bool = False, split: str = "train"
) -> str:
    """The strategy `requested` names, auto resolved for the split; a strategy without what it scores with is an
    error."""
    if requested not in SELECTIONS:
        raise ValueError(f"pair_selection must be one of {', '.join(SELECTIONS)}, not {requested!r}")
    if requested == "auto":
        if split == "heldout":
            return "most-different"
        return "reward-extremes" if have_reward_model else "implicit-extremes" if trained_by_dpo else "most-different"
    if requested in REWARD_SELECTIONS and not have_reward_model:
        raise ValueError(f"pair_selection {requested} needs a registered reward model: run `prefloop train-rm` first")
    if requested == "implicit-extremes" and not trained_by_dpo:
        raise ValueError("pair_selection implicit-extremes needs a round whose checkpoint DPO trained")
    return requested


def eligible_pairs(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """Index pairs (i < j) an annotator may be shown: both non-empty, different texts, both finished; only when no
    such pair exists, pairs of a finished and a cut-off response. Never two cut-off ones."""
    texts = [s.text.strip() for s in samples]
    distinct = [
        (i, j)
        for i in range(len(samples))
        for j in range(i + 1, len(samples))
        if texts[i] and texts[j] and texts[i] != texts[j] and (samples[i].stopped or samples[j].stopped)
    ]
    finished = [(i, j) for i, j in distinct if samples[i].stopped and samples[j].stopped]
    return finished or distinct


def dice_distance(text_a: str, text_b: str) -> float:
    """1 - 2|A ∩ B| / (|A| + |B|) over the multisets of words and punctuation marks: 0 for the same words, 1 for none
    shared."""
    a, b = Counter(_WORD.findall(text_a.lower())), Counter(_WORD.findall(text_b.lower()))
    total = sum(a.values()) + sum(b.values())
    return 1.0 - 2 * sum((a & b).values()) / total if total else 0.0


def select_pair(
    samples: Sequence[Sample], strategy: str, scores: Sequence[float] | None = None
) -> tuple[int, int] | None:
    """The eligible pair the (resolved) strategy picks, or None when no pair is eligible; ties go to the first."""
    candidates = eligible_pairs(samples)
    if not candidates:
        return None
    if strategy == "most-different":
        return max(candidates, key=lambda p: dice_distance(samples[p[0]].text, samples[p[1]].text))
    if scores is None:
        raise ValueError(f"pair selection {strategy} needs reward scores")
    if strategy in ("reward-extremes", "implicit-extremes"):
        return max(candidates, key=lambda p: abs(scores[p[0]] - scores[p[1]]))
    if strategy == "reward-uncertain":
        return min(candidates, key=lambda p: abs(scores[p[0]] - scores[p[1]]))
    raise ValueError(f"unknown pair selection {strategy!r}")


def shuffle_sides(pair: tuple[int, int], seed: int, prompt_id: int) -> tuple[int, int]:
    """The pair in a/b order decided by a coin seeded with (seed, prompt id): neither side is the selection's."""
    return pair if random.Random(f"{seed}:{prompt_id}").random() < 0.5 else (pair[1], pair[0])
