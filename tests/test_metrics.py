"""Every metric on constructed data whose answer is known (worked out by hand in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    Estimate,
    accuracy,
    annotator_table,
    bootstrap,
    cohen_kappa,
    format_estimate,
    kappa_from_confusion,
    krippendorff_alpha,
    label_quality,
    majority,
    preference_outcome,
    win_rate,
)

# Ten doubly-judged pairs (first judge, second judge):
#   (a,a) x4, (b,b) x3, (a,b), (b,a), (tie,a)
# Observed agreement p_o = 7/10.
# Marginals: first judge a=5, b=4, tie=1; second judge a=6, b=4, tie=0.
# Chance agreement p_e = (5*6 + 4*4 + 1*0) / 10^2 = 0.46.
# kappa = (0.70 - 0.46) / (1 - 0.46) = 0.24 / 0.54 = 4/9.
KAPPA_PAIRS = [("a", "a")] * 4 + [("b", "b")] * 3 + [("a", "b"), ("b", "a"), ("tie", "a")]

# The same ten units for Krippendorff's alpha (nominal). Coincidence matrix (each unit of 2 values adds 1 per
# ordered pair of its values): o_aa = 8, o_bb = 6, o_ab = o_ba = 2, o_tie,a = o_a,tie = 1.
# Value totals n_a = 11, n_b = 8, n_tie = 1, n = 20.
# Observed disagreement D_o = (2 + 2 + 1 + 1) / 20 = 0.3.
# Expected disagreement D_e = sum_{c != k} n_c n_k / (n (n - 1)) = 2 (11*8 + 11*1 + 8*1) / (20*19) = 214/380.
# alpha = 1 - D_o / D_e = 1 - (6 * 380) / (20 * 214) = 50/107.
ALPHA_TWO_CODERS = 50 / 107

# Three coders, missing values and both_bad: units (a,a,a), (a,a,b), (b,b), (tie,both_bad).
# A unit of m values adds 1/(m-1) per ordered pair: (a,a,a) gives o_aa += 6/2 = 3; (a,a,b) gives o_aa += 1,
# o_ab += 1, o_ba += 1; (b,b) gives o_bb += 2; (tie,both_bad) gives o_tie,bb = o_bb,tie = 1.
# n_a = 5, n_b = 3, n_tie = 1, n_both_bad = 1, n = 10. D_o = 4/10.
# D_e = (n^2 - sum n_c^2) / (n (n - 1)) = (100 - 36) / 90 = 64/90.  alpha = 1 - 0.4 * 90 / 64 = 28/64 = 0.4375.
ALPHA_UNITS = [["a", "a", "a"], ["a", "a", "b"], ["b", "b"], ["tie", "both_bad"]]


def test_cohen_kappa_matches_hand_computation():
    estimate = cohen_kappa(KAPPA_PAIRS, seed=0, n_boot=300)
    assert estimate.value == pytest.approx(4 / 9)
    assert estimate.n == 10
    assert estimate.ci_low <= estimate.value <= estimate.ci_high


def test_cohen_kappa_perfect_and_undefined():
    assert cohen_kappa([("a", "a"), ("b", "b"), ("tie", "tie")], n_boot=50).value == pytest.approx(1.0)
    # Everyone always said "a": chance agreement is 1 and kappa is 0/0.
    assert cohen_kappa([("a", "a"), ("a", "a")], n_boot=50).value is None


def test_krippendorff_alpha_two_coders_matches_hand_computation():
    units = [list(p) for p in KAPPA_PAIRS]
    assert krippendorff_alpha(units, n_boot=100).value == pytest.approx(ALPHA_TWO_CODERS)
    # A unit judged once carries no agreement information and must not change alpha.
    with_single = krippendorff_alpha(units + [["both_bad"]], n_boot=100)
    assert with_single.value == pytest.approx(ALPHA_TWO_CODERS)
    assert with_single.n == 10


def test_krippendorff_alpha_three_coders_missing_values_and_both_bad():
    estimate = krippendorff_alpha(ALPHA_UNITS, n_boot=200)
    assert estimate.value == pytest.approx(0.4375)
    assert estimate.n == 4


def test_krippendorff_alpha_without_pairable_units():
    assert krippendorff_alpha([["a"], ["b"]]).value is None
    assert krippendorff_alpha([]).n == 0


def test_accuracy_and_win_rate_values():
    assert accuracy([True, True, False, True]).value == pytest.approx(0.75)
    # win 1, win 1, tie 1/2, loss 0 -> 2.5 / 4
    estimate = win_rate(["win", "win", "tie", "loss"])
    assert estimate.value == pytest.approx(0.625)
    assert estimate.n == 4
    with pytest.raises(ValueError, match="draw"):
        win_rate(["win", "draw"])


def test_preference_outcome_and_majority():
    assert preference_outcome("a", "a") == "win"
    assert preference_outcome("a", "b") == "loss"
    assert preference_outcome("b", "b") == "win"
    assert preference_outcome("tie", "a") == "tie"
    assert preference_outcome("both_bad", "b") == "tie"
    assert majority(["a", "b", "a"]) == "a"
    assert majority(["a", "b"]) is None
    assert majority(["tie", "tie", "a", "a"]) is None
    assert majority([]) is None


def test_bootstrap_edge_cases():
    assert bootstrap([]) == Estimate(None, None, None, 0)
    one = bootstrap([0.25])
    assert (one.value, one.ci_low, one.ci_high, one.n) == (0.25, 0.25, 0.25, 1)
    constant = bootstrap([3.0] * 20)
    assert constant.ci_low == constant.ci_high == 3.0
    # Seeded: the same call gives the same interval; another seed a different one.
    data = list(np.random.default_rng(1).normal(size=50))
    assert bootstrap(data, seed=4) == bootstrap(data, seed=4)
    assert bootstrap(data, seed=4) != bootstrap(data, seed=5)


def test_bootstrap_interval_covers_the_truth_in_simulation():
    """Percentile-bootstrap 95% intervals of a Bernoulli(0.7) mean from n=100 cover 0.7 in >= 90% of 200 trials,
    and are about as wide as the normal-theory interval (2 * 1.96 * sqrt(0.21/100) = 0.18), not trivially wide."""
    rng = np.random.default_rng(2026)
    covered, widths = 0, []
    for trial in range(200):
        sample = (rng.random(100) < 0.7).tolist()
        estimate = accuracy(sample, seed=trial, n_boot=500)
        covered += estimate.ci_low <= 0.7 <= estimate.ci_high
        widths.append(estimate.ci_high - estimate.ci_low)
    assert covered >= 180
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 100), rel=0.15)


def test_kappa_interval_covers_the_truth_in_simulation():
    """Two judges who copy a true label with probability 0.8 (else pick uniformly among a/b/tie): the bootstrap
    interval of kappa over 200 pairs covers the population kappa in >= 90% of 200 trials.

    Population: true label uniform over a, b, tie; each judge reports it w.p. 0.8 + 0.2/3, any other w.p. 0.2/3.
    p_o = (0.8 + 0.2/3)^2 + 2 * (0.2/3)^2 = 0.7600; marginals are uniform, so p_e = 1/3 and
    kappa = (0.76 - 1/3) / (2/3) = 0.64.
    """
    rng = np.random.default_rng(7)
    labels = np.array(["a", "b", "tie"])
    truth_kappa = ((0.8 + 0.2 / 3) ** 2 + 2 * (0.2 / 3) ** 2 - 1 / 3) / (2 / 3)
    assert truth_kappa == pytest.approx(0.64)

    def judge(truth):
        noisy = rng.random(len(truth)) < 0.2
        return np.where(noisy, rng.integers(0, 3, len(truth)), truth)

    covered = 0
    for trial in range(200):
        truth = rng.integers(0, 3, 200)
        pairs = list(zip(labels[judge(truth)], labels[judge(truth)]))
        estimate = cohen_kappa(pairs, seed=trial)
        covered += estimate.ci_low <= truth_kappa <= estimate.ci_high
    assert covered >= 180


def test_vectorised_kappa_equals_sklearn():
    """The bootstrap's kappa formula is sklearn's: same value on random tables, NaN when chance agreement is 1."""
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        first, second = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        confusion = np.zeros((4, 4))
        np.add.at(confusion, (first, second), 1)
        assert kappa_from_confusion(confusion) == pytest.approx(cohen_kappa_score(first, second))
    assert np.isnan(kappa_from_confusion(np.array([[5, 0], [0, 0]])))


def _j(annotator, pair_id, choice, shown_left=None, seconds=None, len_a=None, len_b=None, gold=None):
    return dict(
        annotator=annotator, pair_id=pair_id, choice=choice, shown_left=shown_left, seconds_spent=seconds,
        len_a=len_a, len_b=len_b, gold_choice=gold,
    )


JUDGMENTS = [
    # pair 1: ann a (a on the left, a is longer), bob a, cat b
    _j("ann", 1, "a", "a", 2.0, 10, 5),
    _j("bob", 1, "a", "b", 8.0, 10, 5),
    _j("cat", 1, "b", "a", 1.0, 10, 5),
    # pair 2: ann b (a on the left, b is longer), bob b
    _j("ann", 2, "b", "a", 4.0, 10, 20),
    _j("bob", 2, "b", "a", 9.0, 10, 20),
    # pair 3 (gold a): ann tie, bob a
    _j("ann", 3, "tie", "b", 6.0, 3, 4, gold="a"),
    _j("bob", 3, "a", "a", 10.0, 3, 4, gold="a"),
    # pair 4 (gold a, equal lengths): ann alone, a while b was on the left; no seconds recorded
    _j("ann", 4, "a", "b", None, 7, 7, gold="a"),
]


def test_annotator_table_rates():
    table = {row["annotator"]: row for row in annotator_table(JUDGMENTS, n_boot=100)}
    ann, bob, cat = table["ann"], table["bob"], table["cat"]
    assert ann["count"] == 4 and bob["count"] == 3 and cat["count"] == 1
    assert ann["median_seconds"] == 4.0  # median of 2, 4, 6 (pair 4 has none)
    assert bob["median_seconds"] == 9.0
    # ann vs the others' majority: pair 1 others split a/b (left out); pair 2 bob b (match); pair 3 bob a (ann said
    # tie: no match); pair 4 nobody else (left out) -> 1/2.
    assert (ann["agreement"].value, ann["agreement"].n) == (0.5, 2)
    # bob: pair 1 others ann a / cat b split (left out); pair 2 ann b (match); pair 3 ann tie (no match) -> 1/2.
    assert (bob["agreement"].value, bob["agreement"].n) == (0.5, 2)
    # cat: pair 1 others ann a, bob a -> majority a, cat said b.
    assert (cat["agreement"].value, cat["agreement"].n) == (0.0, 1)
    # ann's decided judgments with a known order: pair 1 chose left (a), pair 2 chose right (b, a on the left),
    # pair 4 chose right (a, b on the left); pair 3 was a tie -> 1/3.
    assert ann["left_rate"].value == pytest.approx(1 / 3) and ann["left_rate"].n == 3
    # bob: pair 1 a with b on the left (right), pair 2 b with a on the left (right), pair 3 a with a on the left
    # (left) -> 1/3.
    assert bob["left_rate"].value == pytest.approx(1 / 3)
    # Longer wins: ann pair 1 (a, longer) yes, pair 2 (b, longer) yes, pair 4 equal lengths left out -> 2/2.
    assert (ann["longer_rate"].value, ann["longer_rate"].n) == (1.0, 2)
    # bob: pair 1 yes, pair 2 yes, pair 3 chose a (3 chars) over b (4 chars): no -> 2/3.
    assert bob["longer_rate"].value == pytest.approx(2 / 3)
    # Gold: ann pair 3 tie (wrong), pair 4 a (right) -> 1/2; bob pair 3 a (right) -> 1/1; cat has none.
    assert (ann["gold_accuracy"].value, ann["gold_accuracy"].n) == (0.5, 2)
    assert (bob["gold_accuracy"].value, bob["gold_accuracy"].n) == (1.0, 1)
    assert cat["gold_accuracy"] == Estimate(None, None, None, 0)


def test_label_quality_uses_first_two_judgments_for_kappa():
    quality = label_quality(JUDGMENTS, n_boot=50)
    # Doubly judged pairs: 1 (ann a, bob a), 2 (b, b), 3 (tie, a). Pair 1's third judgment is not in kappa.
    # p_o = 2/3; first judge a,b,tie one each; second a=2, b=1 -> p_e = (1*2 + 1*1 + 1*0)/9 = 1/3;
    # kappa = (2/3 - 1/3) / (2/3) = 0.5.
    assert quality["kappa"].n == 3
    assert quality["kappa"].value == pytest.approx(0.5)
    assert quality["alpha"].n == 3  # pair 4 has one judgment
    assert [row["annotator"] for row in quality["annotators"]] == ["ann", "bob", "cat"]


def test_estimate_row_and_format():
    estimate = Estimate(0.71234, 0.65, 0.77, 120)
    assert estimate.row("heldout_acc_dpo", beta=0.1) == dict(
        metric="heldout_acc_dpo", value=0.71234, ci_low=0.65, ci_high=0.77, n=120, details={"beta": 0.1}
    )
    assert format_estimate(estimate) == "0.712 [0.650, 0.770] n=120"
    assert format_estimate(Estimate(None, None, None, 0)) == "n=0"
