"""The admin Dashboard in a real browser, with two rounds of data written through the store's public APIs.

    .venv/bin/python -m pytest tests/test_dashboard_browser.py -q   # needs /usr/bin/chromium (.ci/run installs it)
    PREFLOOP_SCREENSHOTS=/tmp/shots .venv/bin/python -m pytest tests/test_dashboard_browser.py -q   # and look at it

Two rounds of pairs judged by three annotators (with disagreements), evaluation results with confidence intervals
for both rounds, and two finished training runs, one with a TensorBoard event file. The test checks what an admin
sees: every chart drawn with a nonzero size, its title, the rounds and values on it, and the agreement and bias
table holding the numbers the judgments imply (computed here from the judgments, independently of the app).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict

import pytest

from store import Judgment
from tests.browser import screenshot, sign_in, wait_idle
from tests.labeling_data import make_round
from training.metrics import accuracy, win_rate

pytest_plugins = ["tests.browser"]
pytestmark = pytest.mark.browser

ANNOTATORS = ("dash-alice", "dash-bob", "dash-carol")
# (round, pair, annotator, choice, shown_left), in the order they are submitted. Response a is the longer one on
# even pairs, b on odd pairs.
JUDGMENTS = [
    (0, 0, "dash-alice", "a", "a"), (0, 0, "dash-bob", "a", "b"), (0, 0, "dash-carol", "b", "a"),
    (0, 1, "dash-alice", "b", "b"), (0, 1, "dash-bob", "b", "a"),
    (0, 2, "dash-alice", "tie", "a"), (0, 2, "dash-carol", "a", "b"),
    (0, 3, "dash-bob", "a", "a"), (0, 3, "dash-carol", "a", "a"), (0, 3, "dash-alice", "b", "b"),
    (1, 0, "dash-alice", "a", "a"), (1, 0, "dash-bob", "b", "b"),
    (1, 1, "dash-bob", "a", "b"), (1, 1, "dash-carol", "a", "a"),
    (1, 2, "dash-alice", "both_bad", "b"), (1, 2, "dash-bob", "both_bad", "a"),
    (1, 3, "dash-carol", "b", "b"), (1, 3, "dash-alice", "b", "a"), (1, 3, "dash-bob", "a", "a"),
]
PAIRS_PER_ROUND = 4
# Per round: held-out correctness of the policy and of the reward model, and the new policy's outcomes against the
# previous round's (round 0 has no previous round). The held-out pairs' first half has the longer answer preferred, the
# second the shorter (heldout_accuracy); each half holds a miss, so each interval is drawn with a height.
HELDOUT_CORRECT = {0: [1, 0, 1, 1, 0, 1, 0, 1], 1: [1, 1, 1, 0, 1, 0, 1, 1, 1, 1]}
REWARD_CORRECT = {0: [1, 0, 1, 0, 1, 1], 1: [1, 1, 0, 1, 1, 1]}
WIN_OUTCOMES = ["win", "win", "loss", "tie", "win"]
CURVE_STEPS = 8


def items(round_id: int) -> list[tuple[list[dict], str, str]]:
    def answer(i: int, side: str, longer: bool) -> str:
        return f"round {round_id} answer {i}{side}" + (", explained at some length" if longer else "")

    return [([{"role": "user", "content": f"round {round_id} question {i}"}],
             answer(i, "a", i % 2 == 0), answer(i, "b", i % 2 == 1)) for i in range(PAIRS_PER_ROUND)]


def heldout_accuracy(round_id: int) -> dict:
    """The round's held-out accuracy row, split as the evaluation splits it: the first half of the pairs with the
    longer answer preferred, the second with the shorter."""
    correct, half = HELDOUT_CORRECT[round_id], len(HELDOUT_CORRECT[round_id]) // 2
    by_length = {"chosen_longer": asdict(accuracy(correct[:half])), "chosen_shorter": asdict(accuracy(correct[half:]))}
    return accuracy(correct).row("heldout_accuracy", by_length=by_length)


def fill_two_rounds(store, run_root) -> dict:
    """Rounds 0 and 1 with judgments, eval results and training runs, as the loop would leave them."""
    from torch.utils.tensorboard import SummaryWriter

    pairs = {}
    for round_id in (0, 1):
        number, pairs[round_id] = make_round(store, items(round_id), overlap=2)
        assert number == round_id
    people = {name: store.add_annotator(name)[0] for name in ANNOTATORS}
    # In bulk (past a lease, beyond overlap 2 on some pairs): what an import or an older database can hold.
    store.add_judgments_bulk([Judgment(pairs[round_id][i], people[name].id, choice, shown_left=left, seconds_spent=4.0)
                              for round_id, i, name, choice, left in JUDGMENTS])

    base = store.get_round(0)["checkpoint_id"]
    policy = store.register_checkpoint("dpo", "test-model", "adapters/dpo-0", round_id=0, parent_id=base)
    rewards = [store.register_checkpoint("reward", "test-model", f"adapters/rm-{r}", round_id=r, parent_id=base)
               for r in (0, 1)]
    store.add_eval_results(base, 0, [heldout_accuracy(0)])
    store.add_eval_results(policy, 1, [heldout_accuracy(1),
                                       win_rate(WIN_OUTCOMES).row("win_rate_vs_previous", source="human")])
    for round_id, checkpoint in enumerate(rewards):
        store.add_eval_results(checkpoint, round_id, [accuracy(REWARD_CORRECT[round_id]).row("reward_accuracy")])

    reward_run = store.start_training_run("reward", str(run_root / "rm-0"), {"lr": 1e-4}, round_id=0,
                                          parent_checkpoint_id=base)
    store.finish_training_run(reward_run, {"eval_accuracy": 0.75}, checkpoint_id=rewards[0])
    run_dir = run_root / "dpo-0"
    dpo_run = store.start_training_run("dpo", str(run_dir), {"beta": 0.1}, round_id=0, parent_checkpoint_id=base)
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for step in range(CURVE_STEPS):
        writer.add_scalar("train/loss", 0.7 / (step + 1), step)
        writer.add_scalar("train/rewards/accuracies", step / CURVE_STEPS, step)
    writer.close()
    store.finish_training_run(dpo_run, {"train_loss": 0.2}, checkpoint_id=policy)
    return dict(pairs=pairs, dpo_run=dpo_run)


def expected_label_quality() -> dict:
    """Agreement and bias as the judgments above imply them, computed from their definitions (see training/metrics)."""
    texts = {r: items(r) for r in (0, 1)}
    by_pair = defaultdict(list)  # (round, pair) -> choices in submission order, with who made them
    for round_id, i, name, choice, _ in JUDGMENTS:
        by_pair[round_id, i].append((name, choice))
    rates = {name: defaultdict(list) for name in ANNOTATORS}
    for round_id, i, name, choice, left in JUDGMENTS:
        others = Counter(c for n, c in by_pair[round_id, i] if n != name).most_common()
        if others and (len(others) == 1 or others[0][1] > others[1][1]):  # the others have a unique majority
            rates[name]["agreement with majority"].append(choice == others[0][0])
        if choice in ("a", "b"):
            _, a, b = texts[round_id][i]
            rates[name]["left-choice rate"].append(choice == left)
            rates[name]["longer-wins rate"].append(choice == ("a" if len(a) > len(b) else "b"))
    # Cohen's kappa of the first against the second judgment of each pair.
    first_two = [(judged[0][1], judged[1][1]) for judged in by_pair.values() if len(judged) >= 2]
    n = len(first_two)
    observed = sum(x == y for x, y in first_two) / n
    firsts, seconds = Counter(x for x, _ in first_two), Counter(y for _, y in first_two)
    chance = sum(firsts[c] * seconds[c] for c in firsts) / n**2
    return dict(rates=rates, kappa=(observed - chance) / (1 - chance), alpha=krippendorff_alpha(by_pair.values()))


def krippendorff_alpha(units) -> float:
    """Nominal alpha from its coincidence matrix: o[c, k] counts ordered pairs of values within a unit, weighted
    1 / (m - 1) for a unit of m values; alpha = 1 - (n - 1) * disagreements / expected disagreements."""
    coincidences = Counter()
    for judged in units:
        values = [choice for _, choice in judged]
        for x in range(len(values)):
            for y in range(len(values)):
                if x != y:
                    coincidences[values[x], values[y]] += 1 / (len(values) - 1)
    totals = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    observed = sum(w for (c, k), w in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    return 1 - (n - 1) * observed / expected


CHARTS_JS = """() => [...document.querySelectorAll('[data-testid=stVegaLiteChart]')].map(chart => {
    const svg = chart.querySelector('svg.marks');
    const box = element => { const r = element.getBoundingClientRect(); return {width: r.width, height: r.height}; };
    const marks = role => [...chart.querySelectorAll(`[aria-roledescription="${role}"]`)]
        .map(mark => ({label: mark.getAttribute('aria-label'), ...box(mark)}));
    return {
        svg: svg ? box(svg) : null,
        titles: [...chart.querySelectorAll('[aria-label^="Title text"]')].map(t => t.textContent),
        axes: [...chart.querySelectorAll('g.role-axis[aria-label]')].map(a => ({label: a.getAttribute('aria-label'),
                                                                              ...box(a)})),
        legend: [...chart.querySelectorAll('g.role-legend-label text')].map(t => t.textContent),
        points: marks('point'), areas: marks('area mark'), lines: marks('line mark'), bars: marks('bar'),
        errorbars: marks('errorbar'),
    };
})"""

GRID_JS = """element => {
    const headers = [...element.querySelectorAll('thead th')].map(th => th.textContent);
    return [...element.querySelectorAll('tbody tr')].map(row =>
        Object.fromEntries([...row.querySelectorAll('td')].map((td, i) => [headers[i], td.textContent])));
}"""


def described(label: str) -> dict:
    """Vega's description of a mark, 'round: 1; value: 0.7; ...', as a dict."""
    return dict(part.split(": ", 1) for part in label.split("; "))


def test_dashboard_shows_two_rounds_of_charts_and_label_quality(server, new_page, tmp_path):
    url, store = server
    data = fill_two_rounds(store, tmp_path / "runs")
    _, token = store.add_annotator("dash-root", "admin")
    page = new_page(height=3200)  # tall enough to hold the whole page, for the screenshot
    sign_in(page, url, token, "dashboard")
    page.get_by_role("heading", name="Dashboard").wait_for()
    page.locator("[data-testid=stVegaLiteChart] svg.marks").first.wait_for()
    wait_idle(page)
    # Vega draws each chart's svg after the script run ends: wait until every chart has one.
    page.wait_for_function("""() => { const charts = document.querySelectorAll('[data-testid=stVegaLiteChart]');
        return [...charts].every(chart => chart.querySelector('svg.marks g.role-frame')); }""")
    screenshot(page, "dashboard")
    assert page.locator("[data-testid=stException]").count() == 0

    # The lead reads the verdict in words: 3.5 of 5 human comparisons won, an interval that includes 50%.
    verdict = page.get_by_text("Round 1 is not measurably better than round 0")
    assert "it wins 70% of 5 held-out comparisons" in verdict.inner_text() and "judged by human" in verdict.inner_text()
    charts = page.evaluate(CHARTS_JS)
    for chart in charts:
        assert chart["svg"]["width"] > 100 and chart["svg"]["height"] > 100, chart
    by_title = {" | ".join(chart["titles"]): chart for chart in charts}
    assert set(by_title) == {
        "",  # the two activity bar charts have no title
        "Held-out accuracy and win rate",
        "Held-out accuracy (summed) by which answer was preferred",
        "Reward-model accuracy on held-out pairs",
        "Judgments per day by annotator",
        "train/loss | train/rewards/accuracies",  # one facet per TensorBoard tag
    } and len(charts) == 7

    # Accuracy, win rate and reward-model accuracy: a point per round and metric at the stored value, with its
    # interval drawn; the reward model, evaluated in both rounds, has a line and a band across them.
    expected_points = {
        (0, "heldout_accuracy"): HELDOUT_CORRECT[0], (1, "heldout_accuracy"): HELDOUT_CORRECT[1],
        (1, "win_rate_vs_previous"): [{"win": 1, "tie": 0.5, "loss": 0}[o] for o in WIN_OUTCOMES],
        (0, "reward_accuracy"): REWARD_CORRECT[0], (1, "reward_accuracy"): REWARD_CORRECT[1],
    } | {
        (r, f"heldout_accuracy_chosen_{side}"): part
        for r, correct in HELDOUT_CORRECT.items()
        for side, part in (("longer", correct[:len(correct) // 2]), ("shorter", correct[len(correct) // 2:]))
    }
    drawn = {}
    for title in ("Held-out accuracy and win rate", "Held-out accuracy (summed) by which answer was preferred",
                  "Reward-model accuracy on held-out pairs"):
        chart = by_title[title]
        x_axis, y_axis = (next(a for a in chart["axes"] if a["label"].startswith(side)) for side in ("X-axis", "Y-axis"))
        assert "titled 'round'" in x_axis["label"] and "from 0 to 1" in x_axis["label"]
        # The plot, not the legend, takes most of the chart's height.
        assert y_axis["height"] > chart["svg"]["height"] / 2, (title, y_axis, chart["svg"])
        for point in chart["points"]:
            d = described(point["label"])
            drawn[int(d["round"]), d["metric"]] = d
            assert point["width"] > 0 and float(d["ci_low"]) <= float(d["value"]) <= float(d["ci_high"])
            assert d["series"] in chart["legend"]  # legend labels are whole, not cut off
        assert len(chart["errorbars"]) == len(chart["points"]) and all(e["height"] > 0 for e in chart["errorbars"])
    assert set(drawn) == set(expected_points)
    for key, outcomes in expected_points.items():
        assert float(drawn[key]["value"]) == pytest.approx(sum(outcomes) / len(outcomes), abs=1e-6), key
        assert int(drawn[key]["n"]) == len(outcomes)
    (band,) = by_title["Reward-model accuracy on held-out pairs"]["areas"]
    (line,) = by_title["Reward-model accuracy on held-out pairs"]["lines"]
    assert band["width"] > 100 and band["height"] > 10 and line["width"] == pytest.approx(band["width"], abs=1)

    # Label quality: kappa and alpha, the per-annotator agreement and bias table, and judgments per day.
    expected = expected_label_quality()
    metrics = {m.locator("[data-testid=stMetricLabel]").inner_text(): m.locator("[data-testid=stMetricValue]")
               .inner_text() for m in page.locator("[data-testid=stMetric]").all()}
    assert metrics["Judgments"] == str(len(JUDGMENTS)) and metrics["Rounds"] == "2"
    assert metrics["Cohen's kappa"] == f"{expected['kappa']:.2f}"
    assert metrics["Krippendorff's alpha"] == f"{expected['alpha']:.2f}"
    frames = page.locator("[data-testid=stDataFrame]")
    table = frames.filter(has_text="left-choice rate").evaluate(GRID_JS)
    assert [row["annotator"] for row in table] == list(ANNOTATORS)
    judged = Counter(name for _, _, name, _, _ in JUDGMENTS)
    for row in table:
        name = row["annotator"]
        assert int(row["judgments"]) == judged[name]
        for column, outcomes in expected["rates"][name].items():
            assert float(row[column]) == pytest.approx(round(sum(outcomes) / len(outcomes), 3)), (name, column)
        for column, interval in (("agreement with majority", "agreement CI"), ("left-choice rate", "left-choice CI")):
            low, high, n = (float(x) for x in re.fullmatch(r"\[(.+), (.+)\] n=(\d+)", row[interval]).groups())
            assert low <= float(row[column]) <= high and n == len(expected["rates"][name][column])
    per_day = [described(bar["label"]) for bar in by_title["Judgments per day by annotator"]["bars"]]
    assert {d["annotator"]: int(d["judgments"]) for d in per_day} == judged
    assert all(bar["height"] > 0 for bar in by_title["Judgments per day by annotator"]["bars"])

    # Training runs: both listed; the latest one is plotted from its TensorBoard file, a line per tag.
    runs = frames.filter(has_text="output_dir").evaluate(GRID_JS)
    assert [(row["kind"], row["status"]) for row in runs] == [("reward", "finished"), ("dpo", "finished")]
    assert page.get_by_label("Run to plot").input_value() == f"run {data['dpo_run']} · dpo · round 0 · finished"
    curves = by_title["train/loss | train/rewards/accuracies"]
    assert [described(line["label"])["tag"] for line in curves["lines"]] == ["train/loss", "train/rewards/accuracies"]
    assert all(line["width"] > 100 and line["height"] > 10 for line in curves["lines"])
    steps = [a["label"] for a in curves["axes"] if a["label"].startswith("X-axis")]
    assert steps and all(f"from 0 to {CURVE_STEPS - 1}" in label for label in steps)
