"""Metrics of the loop as pure functions on plain Python data: estimates with bootstrap confidence intervals,
agreement between annotators (Cohen's kappa, Krippendorff's alpha) and per-annotator quality and bias.

No store, no model: `training/loop/evaluation.py` and `labeler/eval_charts.py` feed them rows read from the store, and
`tests/test_metrics.py` feeds them constructed data with known answers.

Conventions:
* Every rate comes as an `Estimate`: value, percentile-bootstrap 95% interval (seeded, so reruns agree) and n.
* Choices are the stored ones: 'a', 'b', 'tie', 'both_bad'. For agreement all four are categories; for rates that
  need a winner (position and length bias) only 'a' and 'b' judgments count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CHOICES = ("a", "b", "tie", "both_bad")
DEFAULT_BOOTSTRAP = 1000
WIN_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class Estimate:
    """A point estimate with its bootstrap confidence interval; value and bounds are None when n is 0."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def row(self, metric: str, **details) -> dict:
        """The shape `Store.add_eval_results` takes."""
        return dict(metric=metric, value=self.value, ci_low=self.ci_low, ci_high=self.ci_high, n=self.n, details=details)


def bootstrap(
    units: Sequence,
    statistic: Callable[[list], float] | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """`statistic` of `units` (the mean when None) with a percentile-bootstrap interval from resampling the units.

    Resamples where the statistic is undefined (NaN, e.g. alpha of a resample with one category) are dropped.
    """
    n = len(units)
    if n == 0:
        return Estimate(None, None, None, 0)
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    if statistic is None:
        values = np.asarray(units, dtype=float)
        return _percentile_interval(float(values.mean()), values[picks].mean(axis=1), n, level)
    stats = np.array([statistic([units[i] for i in row]) for row in picks], dtype=float)
    return _percentile_interval(statistic(list(units)), stats, n, level)


def bootstrap_by_group(
    groups: Sequence[Sequence[float]], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean of all values with a percentile interval from resampling whole groups (a cluster bootstrap): the right
    interval when values within a group are correlated, like k samples of one prompt. n is the number of values."""
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return Estimate(None, None, None, 0)
    sums = np.array([sum(g) for g in groups], dtype=float)
    sizes = np.array([len(g) for g in groups], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(n_boot, len(groups)))
    stats = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    return _percentile_interval(float(sums.sum() / sizes.sum()), stats, int(sizes.sum()), level)


def _percentile_interval(point: float, stats: np.ndarray, n: int, level: float) -> Estimate:
    if np.isnan(point):
        return Estimate(None, None, None, n)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return Estimate(float(point), None, None, n)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high), n)


def accuracy(correct: Sequence[bool], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> Estimate:
    """Share of True, with its interval."""
    return bootstrap([1.0 if c else 0.0 for c in correct], seed=seed, n_boot=n_boot)


def win_rate(outcomes: Sequence[str], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> Estimate:
    """Win rate of the new model: 'win' scores 1, 'tie' 0.5, 'loss' 0 (so 0.5 means no better, no worse)."""
    unknown = set(outcomes) - set(WIN_SCORES)
    if unknown:
        raise ValueError(f"outcomes must be win, tie or loss, not {sorted(unknown)}")
    return bootstrap([WIN_SCORES[o] for o in outcomes], seed=seed, n_boot=n_boot)


def preference_outcome(choice: str, new_side: str) -> str:
    """'win', 'loss' or 'tie' for the response on `new_side` ('a' or 'b'); tie and both-bad count as ties."""
    if choice in ("tie", "both_bad"):
        return "tie"
    return "win" if choice == new_side else "loss"


def majority(choices: Sequence[str]) -> str | None:
    """The unique most frequent choice, or None when there is none (no votes, or a tied vote)."""
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


# --- agreement ------------------------------------------------------------------------------------------------
def kappa_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Cohen's kappa of confusion matrices (..., K, K) of counts, first judge by row; NaN where chance agreement is 1.

    The same formula as sklearn's unweighted `cohen_kappa_score`, vectorised so that a thousand bootstrap
    resamples take a millisecond instead of seconds.
    """
    confusion = np.asarray(confusion, dtype=float)
    n = confusion.sum(axis=(-2, -1))
    observed = np.trace(confusion, axis1=-2, axis2=-1) / n
    chance = (confusion.sum(axis=-1) * confusion.sum(axis=-2)).sum(axis=-1) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)


def cohen_kappa(
    pairs: Sequence[tuple[str, str]], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP, level: float = 0.95
) -> Estimate:
    """Cohen's kappa between the first and the second judgment of each doubly-judged pair, with a bootstrap over pairs.

    Annotators differ from pair to pair, so this is the pooled kappa of "first judge" against "second judge"; it asks
    whether two people agree more than chance on the same pair, not whether two particular people do. The value is
    sklearn's; resampling pairs with replacement is drawing a multinomial over the 16 cells of the confusion matrix,
    which is how the resamples are drawn.
    """
    from sklearn.metrics import cohen_kappa_score

    n = len(pairs)
    if n == 0:
        return Estimate(None, None, None, 0)
    first, second = zip(*pairs)
    if len(set(first) | set(second)) < 2:
        return Estimate(None, None, None, n)  # everyone used one category: kappa is 0/0
    value = float(cohen_kappa_score(first, second, labels=list(CHOICES)))
    index = {c: i for i, c in enumerate(CHOICES)}
    cells = np.bincount([index[a] * len(CHOICES) + index[b] for a, b in pairs], minlength=len(CHOICES) ** 2)
    resampled = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot)
    stats = kappa_from_confusion(resampled.reshape(n_boot, len(CHOICES), len(CHOICES)))
    return _percentile_interval(value, stats, n, level)


def _alpha(counts: list[list[int]]) -> float:
    import krippendorff

    matrix = np.asarray(counts, dtype=float)
    pairable = matrix[matrix.sum(axis=1) >= 2]
    if len(pairable) == 0 or np.count_nonzero(pairable.sum(axis=0)) < 2:
        return float("nan")  # no unit with two values, or one category only: disagreement is 0/0
    return float(krippendorff.alpha(value_counts=pairable, level_of_measurement="nominal"))


def krippendorff_alpha(
    units: Sequence[Sequence[str]], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP
) -> Estimate:
    """Nominal Krippendorff's alpha over units (pairs), each the list of choices its annotators made.

    Any number of annotators per pair; units with fewer than two judgments carry no agreement information and are
    left out (n counts the units that remain). The interval resamples units.
    """
    counts = [[list(choices).count(c) for c in CHOICES] for choices in units if len(choices) >= 2]
    return bootstrap(counts, _alpha, seed=seed, n_boot=n_boot)


# --- per-annotator quality and bias ---------------------------------------------------------------------------
def annotator_table(judgments: Sequence[dict], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> list[dict]:
    """One row per annotator from judgment rows with keys annotator, pair_id, choice, shown_left, seconds_spent,
    len_a, len_b (response lengths) and gold_choice (None unless the pair is gold).

    * count, median_seconds;
    * agreement: share of their judgments that match the majority of the *other* annotators of the pair (pairs
      where the others have no unique majority are left out), so one's own vote never props up one's agreement;
    * left_rate: share of 'a'/'b' judgments picking the response shown on the left (0.5 = no position bias);
    * longer_rate: share of 'a'/'b' judgments on pairs of unequal length picking the longer response (length bias);
    * gold_accuracy: share of judgments on gold pairs that match the known answer.
    Each rate is an Estimate with n the judgments it is computed on.
    """
    by_pair: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for j in judgments:
        by_pair[j["pair_id"]].append((j["annotator"], j["choice"]))
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        mine = rows[j["annotator"]]
        mine["count"].append(1)
        if j.get("seconds_spent") is not None:
            mine["seconds"].append(j["seconds_spent"])
        others = majority([c for name, c in by_pair[j["pair_id"]] if name != j["annotator"]])
        if others is not None:
            mine["agreement"].append(j["choice"] == others)
        decided = j["choice"] in ("a", "b")
        if decided and j.get("shown_left") in ("a", "b"):
            mine["left"].append(j["choice"] == j["shown_left"])
        if decided and j.get("len_a") is not None and j.get("len_b") is not None and j["len_a"] != j["len_b"]:
            longer = "a" if j["len_a"] > j["len_b"] else "b"
            mine["longer"].append(j["choice"] == longer)
        if j.get("gold_choice") is not None:
            mine["gold"].append(j["choice"] == j["gold_choice"])
    table = []
    for name in sorted(rows):
        mine = rows[name]
        table.append(
            dict(
                annotator=name,
                count=len(mine["count"]),
                median_seconds=float(np.median(mine["seconds"])) if mine["seconds"] else None,
                agreement=accuracy(mine["agreement"], seed, n_boot),
                left_rate=accuracy(mine["left"], seed, n_boot),
                longer_rate=accuracy(mine["longer"], seed, n_boot),
                gold_accuracy=accuracy(mine["gold"], seed, n_boot),
            )
        )
    return table


def label_quality(judgments: Sequence[dict], seed: int = 0, n_boot: int = DEFAULT_BOOTSTRAP) -> dict:
    """Agreement overall and the per-annotator table, from judgment rows ordered by time (see `annotator_table`).

    kappa uses the first two judgments of every pair judged at least twice; alpha uses every judgment.
    """
    by_pair: dict[int, list[str]] = defaultdict(list)
    for j in judgments:
        by_pair[j["pair_id"]].append(j["choice"])
    doubly = [(choices[0], choices[1]) for choices in by_pair.values() if len(choices) >= 2]
    return dict(
        kappa=cohen_kappa(doubly, seed, n_boot),
        alpha=krippendorff_alpha(list(by_pair.values()), seed, n_boot),
        annotators=annotator_table(judgments, seed, n_boot),
    )


def format_estimate(estimate: Estimate, digits: int = 3) -> str:
    """'0.712 [0.650, 0.770] n=120', or 'n=0' when there is nothing to estimate."""
    if estimate.value is None:
        return f"n={estimate.n}"
    if estimate.ci_low is None:
        return f"{estimate.value:.{digits}f} n={estimate.n}"
    return f"{estimate.value:.{digits}f} [{estimate.ci_low:.{digits}f}, {estimate.ci_high:.{digits}f}] n={estimate.n}"


def describe_win_rate(estimate: Estimate, this: str, other: str) -> str:
    """One sentence for a lead: does `this` (e.g. "round 3") beat `other`, going by the interval, not the point?"""
    if estimate.value is None:
        return f"No win rate of {this} over {other} yet."
    figures = f"{estimate.value:.0%} of {estimate.n} held-out comparisons"
    if estimate.ci_low is None:
        return f"{this} wins {figures} against {other} (no interval)."
    interval = f"[{estimate.ci_low:.0%}, {estimate.ci_high:.0%}]"
    if estimate.ci_low > 0.5:
        return f"{this} is better than {other}: it wins {figures}, {interval}, the whole interval above 50%."
    if estimate.ci_high < 0.5:
        return f"{this} is worse than {other}: it wins {figures}, {interval}, the whole interval below 50%."
    return f"{this} is not measurably better than {other}: it wins {figures}, {interval}, which includes 50%."


def result_rows(results: list[dict]) -> list[dict]:
    """Stored evaluation results (`Store.list_eval_results`) as flat rows for tables and charts: round, checkpoint,
    kind, metric, value, ci_low, ci_high, n and source (what the figure was measured against)."""
    return [
        dict(
            round=r["round_id"],
            checkpoint=r["checkpoint_id"],
            kind=r["checkpoint_kind"],
            metric=r["metric"],
            value=r["value"],
            ci_low=r["ci_low"],
            ci_high=r["ci_high"],
            n=r["n"],
            source=r["details"].get("source", ""),
        )
        for r in results
    ]
