"""The store on real DuckDB files: migrations, a round trip through every entity, leases, and idempotent judgments.

.venv/bin/python -m pytest tests/test_store.py -q
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from store import Judgment, PromptIn, ResponseIn, Store, StoreError, latest_version
from store.annotators import hash_token
from store.prompts import insert_rows, pair_hash, prompt_hash, split_for
from store.store import rows_as_dicts, utcnow
from tests.labeling_data import judge


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def add_pair(s: Store, prompt_id: int, texts=("A", "B"), round_id: int | None = None, overlap_target: int = 1) -> int:
    """A generated pair with two responses (the store's own pair writers belong to importers and generation)."""
    now = utcnow()
    with s.transaction("test: add pair") as con:
        response_ids = [
            insert_rows(con, "responses", [dict(prompt_id=prompt_id, text=t, finish_reason="stop", created_at=now)])[0]
            for t in texts
        ]
        return insert_rows(
            con,
            "pairs",
            [
                dict(
                    prompt_id=prompt_id,
                    response_a_id=response_ids[0],
                    response_b_id=response_ids[1],
                    round_id=round_id,
                    strategy="samples",
                    overlap_target=overlap_target,
                    content_hash=pair_hash(str(prompt_id), *texts),
                    created_at=now,
                )
            ],
        )[0]


def tables(s: Store) -> set[str]:
    with s.transaction("test: list tables") as con:
        return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def select(s: Store, sql: str, params=()) -> list[dict]:
    """Rows of a query; `params` a sequence for ? or a dict for $name."""
    with s.transaction("test: read") as con:
        return rows_as_dicts(con.execute(sql, params if isinstance(params, dict) else list(params)))


@pytest.fixture
def prompt_id(store) -> int:
    return store.add_prompts([PromptIn(user("What is 2 + 2?"), "test")]).ids[0]


# --- migrations -------------------------------------------------------------------------------------------------


def test_migrates_an_empty_file_to_the_latest_version(db_path):
    assert not db_path.exists()
    s = Store(db_path)
    assert s.schema_version() == latest_version() >= 2
    assert {"prompts", "pairs", "judgments", "leases", "skips", "adjudications", "settings"} <= tables(s)
    versions = select(s, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [v["version"] for v in versions] == list(range(1, latest_version() + 1))
    assert versions[0]["name"] == "initial"
    assert Store(db_path).migrate() == latest_version()  # opening again applies nothing


def test_migrates_from_the_previous_version_keeping_data(db_path):
    old = Store(db_path, migrate=False)
    assert old.migrate(target=1) == 1
    assert "skips" not in tables(old) and "settings" not in tables(old)
    now = utcnow()
    with old.transaction("test: version 1 rows") as con:  # the version-1 schema, written as version-1 code wrote it

        def insert(sql: str, *params) -> int:
            return con.execute(sql + " RETURNING id", [*params, now]).fetchone()[0]

        prompt = insert(
            "INSERT INTO prompts (messages, source, content_hash, split, created_at) VALUES (?, 'old', 'h1', 'train', ?)",
            '[{"content":"Hi","role":"user"}]',
        )
        checkpoint = insert("INSERT INTO checkpoints (kind, base_model, created_at) VALUES ('base', 'm', ?)")
        con.execute("INSERT INTO rounds VALUES (0, ?, 2, ?)", [checkpoint, now])
        a, b = (
            insert(
                "INSERT INTO responses (prompt_id, text, finish_reason, created_at) VALUES (?, ?, 'stop', ?)", prompt, t
            )
            for t in ("x", "y")
        )
        pair = insert(
            "INSERT INTO pairs (prompt_id, response_a_id, response_b_id, round_id, strategy, overlap_target, "
            "content_hash, created_at) VALUES (?, ?, ?, 0, 'samples', 2, 'p1', ?)",
            prompt,
            a,
            b,
        )
        annotator = insert("INSERT INTO annotators (name, role, created_at) VALUES ('ann', 'annotator', ?)")
        con.execute(
            "INSERT INTO judgments (pair_id, annotator_id, choice, strength, rationale, shown_left, seconds_spent, "
            "created_at, updated_at) VALUES (?, ?, 'b', 'clear', 'why', 'a', 3.5, ?, ?)",
            [pair, annotator, now, now],
        )

    assert Store(db_path, migrate=False).migrate() == latest_version()
    s = Store(db_path)
    assert {"skips", "adjudications", "settings"} <= tables(s)
    stored = s.get_pair(pair)
    assert (stored["response_a"], stored["response_b"], stored["gold_choice"], stored["overlap_target"]) == (
        "x",
        "y",
        None,
        2,
    )
    assert stored["messages"] == user("Hi")
    assert [(j["choice"], j["strength"], j["seconds_spent"]) for j in s.judgments(pair_id=pair)] == [
        ("b", "clear", 3.5)
    ]
    assert s.get_round(0)["overlap_target"] == 2
    # the old rows work with the new tables, and new rows get fresh ids from the old sequences
    assert s.add_prompts([PromptIn(user("new"), "new")]).ids != [prompt]
    s.skip_pair(pair, annotator)
    s.adjudicate(pair, annotator, "a")
    assert s.next_pair(annotator) is None
    s.set_setting("guidelines", "be kind")
    assert s.get_setting("guidelines") == "be kind"


def test_refuses_a_database_newer_than_the_code(tmp_path):
    s = Store(tmp_path / "newer.duckdb", migrate=False)
    s.migrate(target=latest_version())
    with s.transaction("test: pretend a newer version") as con:
        con.execute("INSERT INTO schema_migrations VALUES (?, 'future', ?)", [latest_version() + 1, utcnow()])
    with pytest.raises(StoreError, match="newer than this code"):
        s.migrate(target=latest_version() + 1)


# --- prompts and their split -------------------------------------------------------------------------------------


def test_prompts_round_trip_and_split_is_fixed(store, tmp_path):
    messages = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        user("Ünïcödé and emoji 🎉"),
    ]
    summary = store.add_prompts([PromptIn(m, "unit") for m in messages] + [PromptIn(messages[0], "unit")])
    assert (summary.inserted, summary.duplicates) == (2, 1)
    rows = store.get_prompts(summary.ids)
    assert [r["messages"] for r in rows] == messages
    assert [r["content_hash"] for r in rows] == [prompt_hash(m) for m in messages]
    assert all(r["split"] == split_for(r["content_hash"], store.heldout_fraction) for r in rows)

    many = [PromptIn(user(f"prompt number {i}"), "bulk") for i in range(2000)]
    store.add_prompts(many)
    held = store.list_prompts(split="heldout")
    train = store.list_prompts(split="train")
    assert len(held) + len(train) == 2002 and 0.07 < len(held) / 2002 < 0.13
    assert len(store.list_prompts(limit=5)) == 5
    # the same prompt lands in the same split in another database, and re-adding it changes nothing
    other = Store(tmp_path / "other.duckdb")
    other.add_prompts(many[:300])
    split_here = {tuple(map(str, p["messages"])): p["split"] for p in held + train}
    assert all(split_here[tuple(map(str, p["messages"]))] == p["split"] for p in other.list_prompts())
    store.add_prompts(many[:300])
    assert store.list_prompts(split="heldout") == held


# --- checkpoints, rounds, responses ------------------------------------------------------------------------------


def test_checkpoints_and_rounds(store):
    base = store.register_checkpoint("base", "embedded", config={"note": "base"})
    sft = store.register_checkpoint("sft", "embedded", adapter_path="/a/sft", parent_id=base, config={"lr": 2e-4})
    assert store.get_checkpoint(sft) | {"created_at": None} == {
        "id": sft,
        "round_id": None,
        "kind": "sft",
        "base_model": "embedded",
        "adapter_path": "/a/sft",
        "parent_id": base,
        "export_id": None,
        "config": {"lr": 2e-4},
        "created_at": None,
    }
    assert [c["id"] for c in store.list_checkpoints(kind="base")] == [base]
    assert store.latest_checkpoint()["id"] == sft
    assert store.latest_checkpoint(("base",))["id"] == base
    with pytest.raises(StoreError, match="kind must be one of"):
        store.register_checkpoint("lora", "embedded")
    with pytest.raises(StoreError, match="parent checkpoint 999 does not exist"):
        store.register_checkpoint("dpo", "embedded", parent_id=999)
    with pytest.raises(StoreError, match="does not exist"):
        store.get_checkpoint(999)

    assert store.get_round() is None
    assert store.new_round(base) == 0
    assert store.new_round(sft, overlap_target=3) == 1
    assert store.get_round()["id"] == 1 and store.get_round(1)["overlap_target"] == 3
    assert store.get_round(0)["checkpoint_id"] == base and store.get_round(7) is None
    assert [r["id"] for r in store.list_rounds()] == [0, 1]
    with pytest.raises(StoreError, match="overlap target"):
        store.new_round(base, overlap_target=0)
    with pytest.raises(StoreError, match="checkpoint 999 does not exist"):
        store.new_round(999)


def test_responses_round_trip(store, prompt_id):
    checkpoint = store.register_checkpoint("base", "embedded")
    sampling = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 3}
    ids = store.add_responses(
        [
            ResponseIn(prompt_id, checkpoint, "Four.", sampling, 12, 3, "stop"),
            ResponseIn(prompt_id, None, "It is 4 because", {}, None, 64, "length"),
        ]
    )
    rows = select(store, "SELECT * FROM responses WHERE id IN (SELECT unnest(?)) ORDER BY id", [ids])
    assert [
        (r["text"], r["checkpoint_id"], r["prompt_tokens"], r["completion_tokens"], r["finish_reason"]) for r in rows
    ] == [
        ("Four.", checkpoint, 12, 3, "stop"),
        ("It is 4 because", None, None, 64, "length"),
    ]
    assert rows[0]["sampling"] == '{"max_new_tokens":64,"seed":3,"temperature":0.7,"top_p":0.9}'


# --- annotators --------------------------------------------------------------------------------------------------


def test_annotators_tokens_and_disable(store):
    ann, token = store.add_annotator("  alice ")
    admin, admin_token = store.add_annotator("bob", role="admin")
    assert (ann.name, ann.role, ann.disabled) == ("alice", "annotator", False) and admin.is_admin
    stored = select(store, "SELECT token_hash FROM annotators WHERE name = 'alice'")[0]["token_hash"]
    assert stored == hash_token(token) and token not in stored
    assert store.authenticate(token) == ann
    assert store.authenticate(f"  {admin_token}\n") == admin
    assert store.authenticate("not a token") is None and store.authenticate("") is None

    store.set_annotator_disabled("alice", True)
    assert store.authenticate(token) is None and store.get_annotator("alice").disabled
    store.set_annotator_disabled("alice", False)
    assert store.authenticate(token) == ann
    new_token = store.reset_token("alice")
    assert store.authenticate(token) is None and store.authenticate(new_token) == ann

    importer, no_token = store.add_annotator("import:hh", role="import")
    assert no_token is None and store.ensure_annotator("import:hh", "import").id == importer.id
    with pytest.raises(StoreError, match="no annotator or admin named"):
        store.reset_token("import:hh")
    with pytest.raises(StoreError, match="already exists"):
        store.add_annotator("alice")
    with pytest.raises(StoreError, match="role must be one of"):
        store.add_annotator("carol", role="boss")
    with pytest.raises(StoreError, match="must not be empty"):
        store.add_annotator("   ")
    with pytest.raises(StoreError, match="no annotator named"):
        store.set_annotator_disabled("nobody", True)
    assert store.get_annotator("nobody") is None
    assert [a["name"] for a in store.list_annotators()] == ["alice", "bob", "import:hh"]


# --- judgments ---------------------------------------------------------------------------------------------------


def test_judgment_round_trip_resubmit_and_undo(store, prompt_id):
    ann, _ = store.add_annotator("alice")
    pair = add_pair(store, prompt_id)
    first = judge(store, Judgment(pair, ann.id, "a", "slight", "shorter", "b", 4.0))
    assert store.get_pair(pair)["status"] == "complete"
    (row,) = store.judgments(pair_id=pair)
    assert (row["choice"], row["strength"], row["rationale"], row["shown_left"], row["seconds_spent"]) == (
        "a",
        "slight",
        "shorter",
        "b",
        4.0,
    )
    again = store.submit_judgment(Judgment(pair, ann.id, "both_bad", None, None, "a", 9.5))
    (updated,) = store.judgments(pair_id=pair)
    assert again == first and (updated["choice"], updated["strength"], updated["seconds_spent"]) == (
        "both_bad",
        None,
        9.5,
    )
    assert updated["created_at"] == row["created_at"] and updated["updated_at"] >= row["updated_at"]
    assert store.count_judgments() == 1

    undone = store.undo_last(ann.id)
    assert (undone["undone"], undone["pair_id"], undone["pair"]["id"]) == ("judgment", pair, pair)
    assert (undone["choice"], undone["strength"], undone["rationale"], undone["shown_left"]) == ("both_bad", None, None,
                                                                                                 "a")
    assert store.judgments(annotator_id=ann.id) == [] and store.get_pair(pair)["status"] == "open"
    assert store.undo_last(ann.id) is None


def test_judgment_validation(store, prompt_id):
    ann, _ = store.add_annotator("alice")
    pair = add_pair(store, prompt_id)
    for bad, message in [
        (Judgment(pair, ann.id, "c"), "choice must be one of"),
        (Judgment(pair, ann.id, "a", strength="huge"), "strength must be one of"),
        (Judgment(pair, ann.id, "a", shown_left="left"), "shown_left must be"),
        (Judgment(999, ann.id, "a"), "pair 999 does not exist"),
        (Judgment(pair, 999, "a"), "annotator 999 does not exist"),
    ]:
        with pytest.raises(StoreError, match=message):
            store.submit_judgment(bad)
    store.set_annotator_disabled("alice", True)
    with pytest.raises(StoreError, match="is disabled"):
        store.submit_judgment(Judgment(pair, ann.id, "a"))
    assert store.count_judgments() == 0


def test_two_threads_submitting_the_same_judgment_leave_one_row(store, prompt_id):
    ann, _ = store.add_annotator("alice")
    pair = add_pair(store, prompt_id)
    assert store.hold_pair(ann.id, pair)  # the first submit needs the lease; the others are updates
    start = threading.Barrier(2)
    ids, errors = [], []

    def submit(choice: str) -> None:
        try:
            start.wait()
            for _ in range(5):
                ids.append(store.submit_judgment(Judgment(pair, ann.id, choice, seconds_spent=1.0)))
        except Exception as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(choice,)) for choice in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.judgments(pair_id=pair)
    assert len(rows) == 1 and len(ids) == 10 and set(ids) == {rows[0]["id"]}
    assert rows[0]["choice"] in ("a", "b")


# --- leases, skips, adjudication, settings ----------------------------------------------------------------------


def test_next_pair_leases_expiry_and_overlap(store):
    prompts = store.add_prompts([PromptIn(user(f"q{i}"), "t") for i in range(3)]).ids
    checkpoint = store.register_checkpoint("base", "embedded")
    round_id = store.new_round(checkpoint)
    single = add_pair(store, prompts[0], ("a1", "b1"), round_id=round_id)
    double = add_pair(store, prompts[1], ("a2", "b2"), round_id=round_id, overlap_target=2)
    alice, bob, carol = (store.add_annotator(n)[0].id for n in ("alice", "bob", "carol"))
    now = utcnow()

    served = store.next_pair(alice, now=now, lease_seconds=60)
    assert served["id"] == single and (served["response_a"], served["response_b"]) == ("a1", "b1")
    assert served["messages"] == user("q0")
    reload = store.next_pair(alice, now=now + timedelta(seconds=1), lease_seconds=60)
    assert reload["id"] == single  # a reload shows the same pair (and renews the lease to 61 s from `now`)
    assert store.next_pair(bob, now=now)["id"] == double  # alice's live lease fills the single pair's overlap
    assert store.next_pair(carol, now=now)["id"] == double  # overlap 2: bob's lease leaves room for one more
    assert store.next_pair(bob, round_id=round_id + 1, now=now) is None
    later = now + timedelta(seconds=62)  # alice's lease on the single pair expired; bob's and carol's (600 s) did not
    dave = store.add_annotator("dave")[0].id
    assert store.next_pair(dave, now=later)["id"] == single

    store.submit_judgment(Judgment(double, bob, "a"))
    assert store.get_pair(double)["status"] == "open"  # one of two judgments
    store.skip_pair(double, carol)
    assert store.next_pair(carol, now=later) is None  # skipped pair never again; the single pair is leased to dave
    assert store.hold_pair(alice, double, now=later)  # bob's judgment leaves room for one more
    store.submit_judgment(Judgment(double, alice, "b"))
    assert store.get_pair(double)["status"] == "complete"
    assert store.next_pair(alice, now=later) is None and store.next_pair(bob, now=later) is None
    leases = select(store, "SELECT pair_id, annotator_id FROM leases ORDER BY pair_id, annotator_id")
    assert leases == [{"pair_id": single, "annotator_id": dave}]  # submits and skips released their leases


def test_adjudication_and_settings(store, prompt_id):
    admin, _ = store.add_annotator("boss", role="admin")
    pair = add_pair(store, prompt_id)
    store.adjudicate(pair, admin.id, "tie", "both fine")
    store.adjudicate(pair, admin.id, "b", "on reflection b")
    assert select(store, "SELECT pair_id, admin_id, choice, note FROM adjudications") == [
        {"pair_id": pair, "admin_id": admin.id, "choice": "b", "note": "on reflection b"}
    ]
    with pytest.raises(StoreError, match="choice must be one of"):
        store.adjudicate(pair, admin.id, "c")

    assert store.get_setting("guidelines") is None and store.get_setting("guidelines", "none") == "none"
    store.set_setting("guidelines", {"text": "Prefer helpful, honest answers.", "version": 1})
    store.set_setting("guidelines", {"text": "Prefer helpful, honest, harmless answers.", "version": 2})
    assert store.get_setting("guidelines") == {"text": "Prefer helpful, honest, harmless answers.", "version": 2}


# --- exports, training runs, evaluation, status ----------------------------------------------------------------


def test_exports_training_runs_and_eval_results(store):
    export = store.register_export("round-0", "/data/exports/round-0", 0, {"ties": "drop"}, {"train": 90, "test": 10})
    with pytest.raises(StoreError, match="already exists"):
        store.register_export("round-0", "/elsewhere", None, {}, {})
    assert [(e["id"], e["name"], e["policy"], e["counts"]) for e in store.list_exports()] == [
        (export, "round-0", {"ties": "drop"}, {"train": 90, "test": 10})
    ]

    base = store.register_checkpoint("base", "embedded")
    run = store.start_training_run(
        "dpo", "/runs/dpo-0", {"beta": 0.1}, round_id=0, export_id=export, parent_checkpoint_id=base
    )
    failed = store.start_training_run("sft", "/runs/sft-0", {})
    (running,) = [r for r in store.list_training_runs() if r["id"] == run]
    assert running["status"] == "running" and running["finished_at"] is None and running["config"] == {"beta": 0.1}
    dpo = store.register_checkpoint("dpo", "embedded", "/runs/dpo-0/adapter", round_id=0, parent_id=base)
    store.finish_training_run(run, {"loss": 0.31}, checkpoint_id=dpo)
    store.finish_training_run(failed, {}, error="out of memory")
    runs = {r["id"]: r for r in store.list_training_runs()}
    assert (runs[run]["status"], runs[run]["metrics"], runs[run]["checkpoint_id"]) == ("finished", {"loss": 0.31}, dpo)
    assert (runs[failed]["status"], runs[failed]["error"]) == ("failed", "out of memory")
    assert runs[run]["finished_at"] >= runs[run]["started_at"]

    store.add_eval_results(dpo, 0, [{"metric": "win_rate", "value": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 100}])
    store.add_eval_results(dpo, 0, [{"metric": "win_rate", "value": 0.62, "n": 120, "details": {"ties": 3}}])
    store.add_eval_results(base, 0, [{"metric": "win_rate", "value": 0.5}])
    results = store.list_eval_results()
    assert [(r["checkpoint_id"], r["value"], r["n"], r["details"]) for r in results] == [
        (base, 0.5, None, {}),
        (dpo, 0.62, 120, {"ties": 3}),
    ]
    assert [r["checkpoint_kind"] for r in results] == ["base", "dpo"]


def test_status_counts(store):
    ids = store.add_prompts([PromptIn(user(f"q{i}"), "t") for i in range(50)]).ids
    base = store.register_checkpoint("base", "embedded")
    round_id = store.new_round(base)
    pairs = [add_pair(store, ids[i], (f"a{i}", f"b{i}"), round_id=round_id, overlap_target=2) for i in range(3)]
    alice, bob = (store.add_annotator(n)[0].id for n in ("alice", "bob"))
    judge(store, Judgment(pairs[0], alice, "a"))
    judge(store, Judgment(pairs[0], bob, "b"))
    judge(store, Judgment(pairs[1], alice, "a"))
    store.set_annotator_disabled("bob", True)

    status = store.status()
    splits = {p["split"] for p in store.list_prompts()}
    assert sum(status["prompts"].values()) == 50 and set(status["prompts"]) == splits
    (row,) = status["rounds"]
    assert (row["round"], row["checkpoint_kind"], row["pairs"], row["complete"], row["judgments"]) == (
        0,
        "base",
        3,
        1,
        3,
    )
    assert (row["prompts_used"], row["agreement_pending"]) == (3, 1)
    assert status["imported_pairs"] == 0
    assert [(a["name"], a["disabled"], a["judgments"]) for a in status["annotators"]] == [
        ("alice", False, 2),
        ("bob", True, 1),
    ]


# --- browsing (admin pages Browse and Review) ---------------------------------------------------------------------


def _judge(s: Store, pair_id: int, annotator_id: int, choice: str, **fields) -> None:
    """A judgment as the Label page makes it: on a leased pair."""
    s.hold_pair(annotator_id, pair_id)
    s.submit_judgment(Judgment(pair_id, annotator_id, choice, shown_left="a", **fields))


def test_browse_filters_pairs_and_judgments(store):
    from store import BrowseFilter

    checkpoint = store.register_checkpoint("base", "m")
    first, latest = store.new_round(checkpoint), store.new_round(checkpoint)
    prompts = store.add_prompts([PromptIn(user(f"Question {i}: the capital of {c}?"), "test")
                                 for i, c in enumerate(["France", "Peru", "Chad", "Laos"])]).ids
    split = add_pair(store, prompts[0], ("Paris", "Lyon"), first, overlap_target=3)
    agreed = add_pair(store, prompts[1], ("Lima", "Cusco"), latest, overlap_target=3)
    single = add_pair(store, prompts[2], ("N'Djamena", "Moundou"), latest, overlap_target=3)
    unjudged = add_pair(store, prompts[3], ("Vientiane", "Pakse"), latest, overlap_target=3)
    imported = add_pair(store, prompts[3], ("Imported A", "Imported B"), None)
    alice, bob = (store.add_annotator(name)[0] for name in ("alice", "bob"))
    admin, _ = store.add_annotator("root", "admin")
    _judge(store, split, alice.id, "a", rationale="Paris is the CAPITAL", seconds_spent=4.0)
    _judge(store, split, bob.id, "b", seconds_spent=8.0)
    _judge(store, agreed, alice.id, "a", seconds_spent=6.0)
    _judge(store, agreed, bob.id, "a", rationale="both fine, a shorter", seconds_spent=2.0)
    _judge(store, single, bob.id, "tie", seconds_spent=10.0)
    store.adjudicate(split, admin.id, "a", "checked an atlas")

    def pairs(**fields) -> list[int]:
        rows, total = store.browse_pairs(BrowseFilter(**fields))
        assert total == len(rows)
        return sorted(r["pair_id"] for r in rows)

    assert pairs() == sorted([split, agreed, single, unjudged, imported])
    assert pairs(agreement="disagree") == [split] and pairs(agreement="agree") == [agreed]
    assert pairs(agreement="single") == [single] and pairs(agreement="unjudged") == sorted([unjudged, imported])
    assert pairs(round="latest") == sorted([agreed, single, unjudged]) and pairs(round=first) == [split]
    assert pairs(round="imported") == [imported] and pairs(round=str(first)) == [split]
    assert pairs(annotator="alice") == sorted([split, agreed]) and pairs(annotator="alice", choice="b") == []
    assert pairs(choice="tie") == [single] and pairs(judged=True) == sorted([split, agreed, single])
    assert pairs(adjudicated=True) == [split] and pairs(adjudicated=False, judged=True) == sorted([agreed, single])
    # text: the prompt, either response, a rationale or the final label's note, case-insensitive
    assert pairs(text="PERU") == [agreed] and pairs(text="moundou") == [single]
    assert pairs(text="capital") == sorted([split, agreed, single, unjudged, imported])  # in every prompt
    assert pairs(text="IS THE capital") == [split] == pairs(text="atlas")  # a rationale, a note
    assert pairs(text="nowhere") == []

    row = store.browse_pairs(BrowseFilter(agreement="disagree"))[0][0]
    assert (row["judgments"], row["a"], row["b"], row["final_choice"]) == (2, 1, 1, "a")
    assert row["annotators"] == "alice, bob" and row["prompt"] == "Question 0: the capital of France?"

    rows, total = store.browse_judgments(BrowseFilter())
    assert total == 5 and [r["pair_id"] for r in rows] == [single, agreed, agreed, split, split]  # newest first
    rows, total = store.browse_judgments(BrowseFilter(annotator="bob", agreement="agree"))
    assert total == 1 and rows[0]["rationale"] == "both fine, a shorter" and rows[0]["agreement"] == "agree"
    rows, _ = store.browse_judgments(BrowseFilter(text="shorter"))  # this judgment's rationale, not its neighbour's
    assert [(r["pair_id"], r["annotator"]) for r in rows] == [(agreed, "bob")]
    page, total = store.browse_judgments(BrowseFilter(), limit=2, offset=2)
    assert total == 5 and [r["pair_id"] for r in page] == [agreed, split]

    with pytest.raises(StoreError, match="agreement must be one of"):
        store.browse_pairs(BrowseFilter(agreement="sort of"))
    with pytest.raises(StoreError, match="round must be"):
        store.browse_judgments(BrowseFilter(round="yesterday"))


def test_annotator_pace_is_the_median_of_recent_judgments(store):
    prompts = store.add_prompts([PromptIn(user(f"Pace {i}"), "test") for i in range(5)]).ids
    pair_ids = [add_pair(store, p, (f"a{p}", f"b{p}")) for p in prompts]
    alice, _ = store.add_annotator("alice")
    assert store.annotator_pace(alice.id) == {"judgments": 0, "median_seconds": None}
    for pair_id, seconds in zip(pair_ids, [100.0, 100.0, 4.0, 6.0, 8.0]):
        _judge(store, pair_id, alice.id, "a", seconds_spent=seconds)
    assert store.annotator_pace(alice.id) == {"judgments": 5, "median_seconds": 8.0}
    assert store.annotator_pace(alice.id, last=3) == {"judgments": 5, "median_seconds": 6.0}  # the slow start forgotten
