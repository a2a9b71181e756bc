"""One final-label rule (store/final_labels.py): export and evaluation give every pair the same label, whatever mix
of judgments, overlap target, adjudication and gold answer it has."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import Judgment, PromptIn, Store
from store.prompts import insert_rows, pair_hash
from store.store import utcnow
from training.loop.export import ExportConfig, resolve

CHOICES = ["a", "b", "tie", "both_bad"]
pair_specs = st.fixed_dictionaries(
    {
        "overlap": st.integers(1, 3),
        "votes": st.lists(st.sampled_from(CHOICES), max_size=5),
        "adjudication": st.none() | st.sampled_from(CHOICES),
        "gold": st.none() | st.sampled_from(CHOICES),
    }
)


def build(store: Store, specs: list[dict]) -> list[int]:
    """A held-out pair per spec, with its judgments (one annotator each), adjudication and gold answer."""
    store.heldout_fraction = 1.0
    prompt_ids = store.add_prompts([PromptIn([{"role": "user", "content": f"q{i}"}], "t") for i in range(len(specs))]).ids
    base = store.register_checkpoint("base", "tiny")
    store.new_round(base)
    annotators = [store.add_annotator(f"ann{i}")[0].id for i in range(5)]
    admin = store.add_annotator("admin", role="admin")[0].id
    prompts = {p["id"]: p for p in store.get_prompts(prompt_ids)}
    pair_ids = []
    for i, (prompt_id, spec) in enumerate(zip(prompt_ids, specs)):
        texts = [f"first {i}", f"second {i}"]
        response_ids = _responses(store, prompt_id, base, texts)
        with store.transaction("test: pair") as con:
            (pair_id,) = insert_rows(con, "pairs", [dict(
                prompt_id=prompt_id, response_a_id=response_ids[0], response_b_id=response_ids[1], round_id=0,
                strategy="samples", overlap_target=spec["overlap"],
                content_hash=pair_hash(prompts[prompt_id]["content_hash"], *texts), created_at=utcnow(),
            )])
        if spec["votes"]:
            store.add_judgments_bulk([Judgment(pair_id, annotators[k], c) for k, c in enumerate(spec["votes"])])
        if spec["adjudication"]:
            store.adjudicate(pair_id, admin, spec["adjudication"])
        if spec["gold"]:
            store.set_gold(pair_id, spec["gold"])
        pair_ids.append(pair_id)
    return pair_ids


def _responses(store: Store, prompt_id: int, checkpoint: int, texts: list[str]) -> list[int]:
    from store import ResponseIn

    return store.add_responses([ResponseIn(prompt_id, checkpoint, t, {}, None, None, "stop") for t in texts])


def expected_label(spec: dict) -> str | None:
    """The rule, written out independently: adjudication, else gold, else the strict majority of a complete pair."""
    if spec["adjudication"]:
        return spec["adjudication"]
    if spec["gold"]:
        return spec["gold"]
    if len(spec["votes"]) < spec["overlap"]:
        return None
    top = Counter(spec["votes"]).most_common(1)
    return top[0][0] if top and 2 * top[0][1] > len(spec["votes"]) else None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pair_specs, min_size=1, max_size=12))
def test_export_and_evaluation_agree_on_every_final_label(specs):
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory) / "labels.duckdb")
        pair_ids = build(store, specs)
        evaluation = {p["pair_id"]: p["final_choice"] for p in store.heldout_preference_pairs()}
        exported = {}
        for row in store.export_rows().to_pylist():
            resolution = resolve(row, ExportConfig())
            if resolution.label is not None:
                exported[row["pair_id"]] = resolution.label
        for pair_id, spec in zip(pair_ids, specs):
            label = expected_label(spec)
            decided = label if label in ("a", "b") else None
            assert evaluation.get(pair_id) == decided, (spec, evaluation.get(pair_id))
            assert exported.get(pair_id) == decided, (spec, exported.get(pair_id))  # ties and both-bad dropped


def test_a_plurality_without_majority_is_no_label(store):
    """[a, a, b, tie]: a has the most votes but not more than half, so neither export nor evaluation labels it."""
    spec = {"overlap": 4, "votes": ["a", "a", "b", "tie"], "adjudication": None, "gold": None}
    (pair_id,) = build(store, [spec])
    assert store.heldout_preference_pairs() == []
    (row,) = store.export_rows().to_pylist()
    assert (row["final_choice"], resolve(row, ExportConfig()).dropped) == (None, "disagreement")
