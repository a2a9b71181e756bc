"""The overlap target held by the store: leases, submit, skip, undo and history on real DuckDB files, plus a
property-based test over interleavings of lease, expiry and submit for several annotators.

    .venv/bin/python -m pytest tests/test_assignment.py -q
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import Judgment, PairIn, PairReassigned, Store, StoreError
from store.store import utcnow
from tests.labeling_data import judge, make_round, simple_items
from tests.test_store import select
from training.loop.judges import label_with_judge


def people(store, *names):
    return [store.add_annotator(name)[0].id for name in names]


# --- the reproductions ------------------------------------------------------------------------------------
def test_a_second_judgment_on_a_complete_overlap_1_pair_is_refused(store):
    _, (pair, _) = make_round(store, simple_items(2, "full"))
    alice, bob = people(store, "alice", "bob")
    judge(store, Judgment(pair, alice, "a"))
    with pytest.raises(PairReassigned, match="This pair was reassigned: pair .* has all the judgments it needs"):
        store.submit_judgment(Judgment(pair, bob, "b"))
    assert [j["annotator_id"] for j in store.judgments(pair_id=pair)] == [alice]


def test_a_judgment_without_a_lease_is_refused(store):
    _, (pair, _) = make_round(store, simple_items(2, "nolease"))
    (alice,) = people(store, "alice")
    with pytest.raises(PairReassigned, match="your hold on pair .* ended"):
        store.submit_judgment(Judgment(pair, alice, "a"))
    assert store.count_judgments() == 0


def test_an_expired_lease_cannot_add_a_second_judgment_to_an_overlap_1_pair(store):
    _, (first, _) = make_round(store, simple_items(2, "expired"))
    alice, bob = people(store, "alice", "bob")
    now = utcnow()
    assert store.next_pair(alice, lease_seconds=60, now=now - timedelta(seconds=120))["id"] == first  # long gone
    assert store.next_pair(bob, now=now)["id"] == first  # the expired lease freed it
    store.submit_judgment(Judgment(first, bob, "b"), now=now)
    with pytest.raises(PairReassigned, match="has all the judgments it needs"):
        store.submit_judgment(Judgment(first, alice, "a"), now=now)
    assert [j["annotator_id"] for j in store.judgments(pair_id=first)] == [bob]


def test_a_lapsed_lease_on_a_pair_nobody_took_is_refused_until_held_again(store):
    _, (pair,) = make_round(store, simple_items(1, "lapsed"))
    (alice,) = people(store, "alice")
    now = utcnow()
    store.next_pair(alice, lease_seconds=60, now=now)
    later = now + timedelta(seconds=61)
    with pytest.raises(PairReassigned, match="your hold on pair .* ended"):
        store.submit_judgment(Judgment(pair, alice, "a"), now=later)
    assert store.hold_pair(alice, pair, now=later)  # the app takes it again when it still has room
    store.submit_judgment(Judgment(pair, alice, "a"), now=later)
    assert store.get_pair(pair)["status"] == "complete"


def test_a_resubmit_is_an_update_while_the_round_is_open(store):
    _, (pair,) = make_round(store, simple_items(1, "update"))
    (alice,) = people(store, "alice")
    first = judge(store, Judgment(pair, alice, "a", rationale="first"))
    assert store.submit_judgment(Judgment(pair, alice, "b", "clear", "second")) == first  # no lease needed
    (row,) = store.judgments(pair_id=pair)
    assert (row["choice"], row["strength"], row["rationale"]) == ("b", "clear", "second")
    make_round(store, simple_items(1, "next round"))  # a newer round closes this one
    with pytest.raises(StoreError, match="closed when round 1 started"):
        store.submit_judgment(Judgment(pair, alice, "tie"))
    assert store.judgments(pair_id=pair)[0]["choice"] == "b"
    assert store.undo_last(alice) is None  # nothing to undo in the open round


def test_one_lease_per_annotator(store):
    _, pairs = make_round(store, simple_items(3, "single"))
    alice, bob = people(store, "alice", "bob")
    assert store.next_pair(alice)["id"] == pairs[0]
    assert store.hold_pair(alice, pairs[2])  # a second tab's pair replaces the first
    assert select(store, "SELECT annotator_id, pair_id FROM leases") == [{"annotator_id": alice, "pair_id": pairs[2]}]
    assert store.next_pair(bob)["id"] == pairs[0]  # given back
    assert not store.hold_pair(alice, pairs[0])  # bob holds it (overlap 1)
    with pytest.raises(PairReassigned):
        store.submit_judgment(Judgment(pairs[0], alice, "a"))
    assert store.release_lease(alice, pairs[0]) is False  # a stale tab's release leaves the live lease alone
    assert store.release_lease(alice, pairs[2]) is True
    assert store.next_pair(bob)["id"] == pairs[0] and store.next_pair(alice)["id"] == pairs[1]


def test_undo_restores_a_judgment_and_takes_back_a_skip(store):
    _, pairs = make_round(store, simple_items(4, "undo"))
    alice, bob = people(store, "alice", "bob")
    store.next_pair(alice)
    _, upcoming = store.submit_and_next(Judgment(pairs[0], alice, "b", "clear", "b is right", "a", 7.0))
    assert upcoming["id"] == pairs[1]
    assert store.skip_and_next(pairs[1], alice)["id"] == pairs[2]

    undone = store.undo_last(alice)  # the skip was the latest action
    assert (undone["undone"], undone["pair"]["id"]) == ("skip", pairs[1])
    assert select(store, "SELECT count(*) AS n FROM skips")[0]["n"] == 0
    assert select(store, "SELECT pair_id FROM leases WHERE annotator_id = ?", [alice]) == [{"pair_id": pairs[1]}]
    assert store.next_pair(bob)["id"] == pairs[2]  # the pair alice had on screen went back to the pool

    undone = store.undo_last(alice)  # then the judgment, with what it said
    assert (undone["undone"], undone["pair"]["id"], undone["choice"], undone["strength"], undone["rationale"],
            undone["shown_left"]) == ("judgment", pairs[0], "b", "clear", "b is right", "a")
    assert store.judgments(annotator_id=alice) == [] and store.get_pair(pairs[0])["status"] == "open"
    assert store.undo_last(alice) is None

    store.skip_pair(pairs[3], alice)
    judge(store, Judgment(pairs[3], bob, "a"))
    undone = store.undo_last(alice)  # the skipped pair filled up meanwhile: nothing to show again
    assert (undone["undone"], undone["pair_id"], undone["pair"]) == ("skip", pairs[3], None)


def test_recent_judgments_newest_first_with_what_can_change(store):
    _, pairs = make_round(store, [([{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"}],
                                   f"a{i}", f"b{i}") for i in range(3)])
    (alice,) = people(store, "alice")
    for pair, choice in zip(pairs, ("a", "tie", "b")):
        judge(store, Judgment(pair, alice, choice, rationale=f"why {choice}"))
    store.submit_judgment(Judgment(pairs[0], alice, "both_bad"))  # an edit does not reorder
    rows = store.recent_judgments(alice, limit=2)
    assert [(r["pair_id"], r["choice"], r["prompt"], r["editable"]) for r in rows] == [
        (pairs[2], "b", "q2", True), (pairs[1], "tie", "q1", True)]
    make_round(store, simple_items(1, "later"))
    assert not any(r["editable"] for r in store.recent_judgments(alice))


def test_simulated_judges_and_imports_still_label(store):
    """label_with_judge leases and submits as the UI does; imported labeled pairs carry their own judgment."""
    _, pairs = make_round(store, simple_items(5, "sim"), overlap=2)
    result = label_with_judge(store, lambda messages, a, b: ("a" if len(a) <= len(b) else "b", None), "shorter")
    again = label_with_judge(store, lambda messages, a, b: ("tie", None), "ties")
    assert (result.judged, again.judged) == (5, 5) and len(store.judgments()) == 10
    assert all(store.get_pair(p)["status"] == "complete" for p in pairs)
    summary = store.add_imported_pairs([PairIn([{"role": "user", "content": "imported?"}], "yes", "no", "file")],
                                       "file")
    assert summary.inserted == 1 and len(store.judgments()) == 11


def test_a_simulated_judge_stopped_by_its_limit_holds_no_lease(store):
    """Stopping at `limit` leaves the next pair to others: no lease is left to an annotator that has stopped."""
    _, pairs = make_round(store, simple_items(4, "limit"), overlap=1)
    result = label_with_judge(store, lambda messages, a, b: ("a", None), "limited", limit=2)
    assert result.judged == 2 and len(store.judgments()) == 2
    simulated = store.ensure_annotator("sim:limited", "simulated")
    assert not store.release_lease(simulated.id)  # it held none
    bob, _ = store.add_annotator("bob")
    seen = set()
    while (pair := store.next_pair(bob.id)) is not None:
        seen.add(pair["id"])
        store.submit_judgment(Judgment(pair["id"], bob.id, "b"))
    assert len(seen) == 2 and seen | {j["pair_id"] for j in store.judgments() if j["choice"] == "a"} == set(pairs)
    assert label_with_judge(store, lambda messages, a, b: ("a", None), "none", limit=0).judged == 0


# --- interleavings ------------------------------------------------------------------------------------------------
N_PAIRS, N_ANNOTATORS, LEASE = 4, 3, 60
ops = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(0, N_ANNOTATORS - 1)),
        st.tuples(st.just("hold"), st.integers(0, N_ANNOTATORS - 1), st.integers(0, N_PAIRS - 1)),
        st.tuples(st.just("submit"), st.integers(0, N_ANNOTATORS - 1), st.integers(0, N_PAIRS - 1)),
        st.tuples(st.just("submit_next"), st.integers(0, N_ANNOTATORS - 1)),
        st.tuples(st.just("skip"), st.integers(0, N_ANNOTATORS - 1), st.integers(0, N_PAIRS - 1)),
        st.tuples(st.just("undo"), st.integers(0, N_ANNOTATORS - 1)),
        st.tuples(st.just("wait"), st.sampled_from([1, 30, LEASE - 1, LEASE, LEASE + 1, 3 * LEASE])),
    ),
    min_size=1,
    max_size=25,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A database with pairs of overlap targets 1, 2, 3, 1 and three annotators, copied for each example."""
    path = tmp_path_factory.mktemp("interleavings") / "template.duckdb"
    store = Store(path)
    _, pairs = make_round(store, simple_items(N_PAIRS, "inter"), overlap=1)
    with store.transaction("test: overlap targets") as con:
        for pair, target in zip(pairs, (1, 2, 3, 1)):
            con.execute("UPDATE pairs SET overlap_target = ? WHERE id = ?", [target, pair])
    annotators = [store.ensure_annotator(f"sim:{i}", "simulated").id for i in range(N_ANNOTATORS)]
    return path, pairs, annotators


def facts(store: Store, pair: int, annotator: int, now) -> tuple[bool, bool, int, int]:
    """(annotator holds a live lease on pair, annotator judged it, its judgments, its target), read before a submit."""
    (row,) = select(store, """
        SELECT EXISTS (SELECT 1 FROM leases WHERE pair_id = $p AND annotator_id = $a AND expires_at > $now) AS leased,
               EXISTS (SELECT 1 FROM judgments WHERE pair_id = $p AND annotator_id = $a) AS judged,
               (SELECT count(*) FROM judgments WHERE pair_id = $p) AS n,
               (SELECT overlap_target FROM pairs WHERE id = $p) AS target
        """, {"p": pair, "a": annotator, "now": now})
    return row["leased"], row["judged"], row["n"], row["target"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_interleavings_never_exceed_the_target_and_need_a_live_lease(template, tmp_path_factory, steps):
    path, pairs, annotators = template
    copy = tmp_path_factory.mktemp("example") / "db.duckdb"
    shutil.copy(path, copy)
    store = Store(copy)
    now = utcnow()
    screen = {}  # annotator -> pair id the last next/hold gave them (what their page would show)
    for step in steps:
        kind, who = step[0], step[1]
        if kind == "wait":
            now += timedelta(seconds=who)
            continue
        annotator = annotators[who]
        if kind == "next":
            pair = store.next_pair(annotator, lease_seconds=LEASE, now=now)
            screen[annotator] = pair and pair["id"]
        elif kind == "hold":
            store.hold_pair(annotator, pairs[step[2]], LEASE, now=now)
        elif kind == "skip":
            store.skip_pair(pairs[step[2]], annotator)
        elif kind == "undo":
            store.undo_last(annotator, LEASE, now=now)
        else:
            pair = pairs[step[2]] if kind == "submit" else screen.get(annotator)
            if pair is None:
                continue
            leased, judged, n, target = facts(store, pair, annotator, now)
            try:
                if kind == "submit":
                    store.submit_judgment(Judgment(pair, annotator, "a"), now=now)
                else:
                    _, upcoming = store.submit_and_next(Judgment(pair, annotator, "a"), lease_seconds=LEASE, now=now)
                    screen[annotator] = upcoming and upcoming["id"]
                accepted = True
            except PairReassigned:
                accepted = False
            # Accepted exactly when it is an update, or a new judgment with a live lease and room under the target.
            assert accepted == (judged or (leased and n < target)), (step, leased, judged, n, target)
            counts = select(store, "SELECT p.id, p.overlap_target AS target, count(j.id) AS n FROM pairs p "
                                   "LEFT JOIN judgments j ON j.pair_id = p.id GROUP BY ALL")
            assert all(c["n"] <= c["target"] for c in counts), counts


def test_migration_keeps_each_annotators_latest_lease(db_path):
    old = Store(db_path, migrate=False)
    assert old.migrate(target=2) == 2
    now = utcnow()
    with old.transaction("test: version 2 leases") as con:  # version 2 let an annotator hold several pairs
        con.executemany("INSERT INTO leases VALUES (?, ?, ?)", [
            (10, 1, now + timedelta(seconds=30)), (11, 1, now + timedelta(seconds=90)), (12, 2, now)])
    migrated = Store(db_path)
    assert select(migrated, "SELECT annotator_id, pair_id, expires_at FROM leases ORDER BY annotator_id") == [
        {"annotator_id": 1, "pair_id": 11, "expires_at": now + timedelta(seconds=90)},
        {"annotator_id": 2, "pair_id": 12, "expires_at": now}]
    assert "sessions" in {r["table_name"] for r in select(migrated, "SELECT table_name FROM information_schema.tables")}
