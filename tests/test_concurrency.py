"""One DuckDB file shared by real processes: writers and a reader at once, writers SIGKILLed mid-batch, a holder that
outlasts the lock timeout, and a DuckDB connection that bypasses the gate.

Children are spawned, not forked. After every call the store acknowledged, a child appends a line to an ack file
(unbuffered, so the line survives a SIGKILL): the test then knows exactly what the database must hold.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from store import CHOICES, Judgment, PairReassigned, Store, StoreBusy
from store.prompts import insert_rows
from store.store import canonical_json, sha256_hex, utcnow
from tests.labeling_data import judge

SPAWN = mp.get_context("spawn")
STRESS_SECONDS = 30


def add_pairs(store: Store, n: int, tag: str) -> list[int]:
    """n pairs, each of its own prompt and two responses (no pair-making API takes ready texts yet)."""
    now = utcnow()
    with store.transaction("add test pairs") as con:
        prompt_ids = insert_rows(
            con,
            "prompts",
            [
                dict(
                    messages=canonical_json([{"role": "user", "content": f"question {tag} {i}"}]),
                    source="test",
                    content_hash=sha256_hex(f"prompt {tag} {i}"),
                    split="train",
                    created_at=now,
                )
                for i in range(n)
            ],
        )
        responses = defaultdict(list)
        for prompt_id, response_id in insert_rows(
            con,
            "responses",
            [
                dict(prompt_id=p, text=f"answer {side} to {p}", finish_reason="stop", created_at=now)
                for p in prompt_ids
                for side in "ab"
            ],
            returning="[prompt_id, id]",
        ):
            responses[prompt_id].append(response_id)
        return insert_rows(
            con,
            "pairs",
            [
                dict(
                    prompt_id=p,
                    response_a_id=min(responses[p]),
                    response_b_id=max(responses[p]),
                    strategy="samples",
                    content_hash=sha256_hex(f"pair {tag} {p}"),
                    created_at=now,
                )
                for p in prompt_ids
            ],
        )


def annotators(store: Store, prefix: str, n: int) -> list[int]:
    return [store.ensure_annotator(f"{prefix}-{i}", "simulated").id for i in range(n)]


def read_acks(path: Path) -> list[list[str]]:
    """Complete ack lines only: a child killed mid-write may leave a partial last line."""
    if not path.exists():
        return []
    text = path.read_text()
    return [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]


def ack(fd: int, *fields) -> None:
    os.write(fd, (" ".join(map(str, fields)) + "\n").encode())


def wait_until(wall_time: float) -> None:
    time.sleep(max(0.0, wall_time - time.time()))


# --- several writers and a reader --------------------------------------------------------------------------------
def writer(path, annotator_id, pair_ids, shared_annotator_id, shared_pair_ids, start_at, seconds, ack_path):
    """Fresh (pair, own annotator) submits, resubmits of those, and submits racing the other writers on shared pairs."""
    store = Store(path, migrate=False)
    rng = random.Random(os.getpid())
    fresh, done = iter(pair_ids), []
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    wait_until(start_at)
    while time.time() < start_at + seconds:
        roll, pair_id, by = rng.random(), None, annotator_id
        if roll < 0.1:
            pair_id, by = rng.choice(shared_pair_ids), shared_annotator_id
        elif roll >= 0.25 or not done:
            pair_id = next(fresh, None)
            if pair_id is not None:
                done.append(pair_id)
        if pair_id is None:  # a resubmit of one of this writer's own judgments
            pair_id = rng.choice(done)
        choice = rng.choice(CHOICES)
        store.hold_pair(by, pair_id)  # a new judgment needs its annotator's lease (a resubmit, an update, does not)
        try:
            store.submit_judgment(Judgment(pair_id, by, choice, seconds_spent=1.0))
        except PairReassigned:  # another writer moved the shared annotator's one lease to its own pair meanwhile
            continue
        ack(fd, pair_id, by, choice)
    os.close(fd)


def reader(path, ack_paths, start_at, seconds, report):
    """Counts, the judgments list and status, again and again; each read must hold every write acked before it."""
    store = Store(path, migrate=False)
    reads, problems, last_count = 0, [], 0
    wait_until(start_at)
    while time.time() < start_at + seconds:
        acked = {(int(p), int(a)) for ack_path in ack_paths for p, a, _ in read_acks(Path(ack_path))}
        count = store.count_judgments()
        rows = store.judgments()
        status = store.status()
        stored = [(r["pair_id"], r["annotator_id"]) for r in rows]
        if count < last_count:
            problems.append(f"count went down from {last_count} to {count}")
        if len(stored) != len(set(stored)):
            problems.append(f"duplicate (pair, annotator) rows after {len(stored)} rows")
        if not acked <= set(stored):
            problems.append(f"{len(acked - set(stored))} acknowledged judgments missing from a later read")
        if sum(a["judgments"] for a in status["annotators"]) < count:
            problems.append("status counted fewer judgments than an earlier count")
        last_count = count
        reads += 1
    report.put({"reads": reads, "problems": problems[:5]})


@pytest.mark.slow
def test_writers_and_a_reader_for_30_seconds_lose_and_duplicate_nothing(store, db_path, tmp_path):
    n_writers = 4
    own = annotators(store, "writer", n_writers)
    (shared,) = annotators(store, "shared", 1)
    pair_ids = add_pairs(store, 3000, "stress")
    shared_pairs, per_writer = pair_ids[:20], pair_ids[20:]
    ack_paths = [tmp_path / f"acks-{i}.txt" for i in range(n_writers)]
    start_at = time.time() + 3  # spawned children import duckdb and pyarrow first
    report = SPAWN.Queue()
    children = [
        SPAWN.Process(
            target=writer,
            args=(db_path, own[i], per_writer[i::n_writers], shared, shared_pairs, start_at, STRESS_SECONDS,
                  ack_paths[i]),
        )
        for i in range(n_writers)
    ]
    children.append(SPAWN.Process(target=reader, args=(db_path, ack_paths, start_at, STRESS_SECONDS, report)))
    for child in children:
        child.start()
    seen = report.get(timeout=STRESS_SECONDS + 60)
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0] * len(children)

    assert seen["problems"] == []
    acks = [read_acks(path) for path in ack_paths]
    busiest = max(len(a) for a in acks)
    # The gate is shared fairly: nobody gets less than a quarter of the busiest writer's turns (a read is 3 turns).
    assert min(len(a) for a in acks) >= busiest / 4, f"a writer was starved: {[len(a) for a in acks]} acks"
    assert seen["reads"] >= max(5, busiest / 12), f"the reader was starved: {seen['reads']} reads, {busiest} acks"
    last_choice, choices_seen = {}, defaultdict(set)
    for writer_acks in acks:
        for pair_id, annotator_id, choice in writer_acks:
            key = (int(pair_id), int(annotator_id))
            last_choice[key] = choice
            choices_seen[key].add(choice)
    rows = store.judgments()
    stored = {(r["pair_id"], r["annotator_id"]): r["choice"] for r in rows}
    assert len(rows) == len(stored) == store.count_judgments() == len(last_choice)
    assert stored.keys() == last_choice.keys()
    for key, choice in stored.items():
        if key[1] == shared:  # several writers raced on it: any acked choice may be the last one committed
            assert choice in choices_seen[key]
        else:  # one writer, acked in order: the last ack is the stored value
            assert choice == last_choice[key], key
    assert sum(len(a) for a in acks) > len(last_choice), "no resubmits happened"


# --- a writer killed with SIGKILL ----------------------------------------------------------------------------------
BATCH = 50


def killable_writer(path, mode, annotator_id, pair_ids, ack_path):
    """Submits one judgment per transaction, leasing the next pair in the same one as the app does ("submit"), or
    BATCH judgments per transaction ("batch"), acking each."""
    store = Store(path, migrate=False)
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if mode == "submit":
        pair = store.next_pair(annotator_id)
        while pair is not None:
            _, upcoming = store.submit_and_next(Judgment(pair["id"], annotator_id, "a"))
            ack(fd, pair["id"])
            pair = upcoming
        return
    for start in range(0, len(pair_ids), BATCH):
        batch = pair_ids[start : start + BATCH]
        now = utcnow()
        with store.transaction("test batch of judgments") as con:
            insert_rows(
                con,
                "judgments",
                [dict(pair_id=p, annotator_id=annotator_id, choice="b", created_at=now, updated_at=now) for p in batch],
            )
        ack(fd, *batch)


@pytest.mark.parametrize(
    "mode, kill_after_acks", [("submit", 3), ("submit", 30), ("batch", 3)]
)
def test_sigkilled_writer_loses_no_acknowledged_write(store, db_path, tmp_path, mode, kill_after_acks):
    (annotator,) = annotators(store, "killed", 1)
    pair_ids = add_pairs(store, 3000, "kill")
    ack_path = tmp_path / "acks.txt"
    child = SPAWN.Process(target=killable_writer, args=(db_path, mode, annotator, pair_ids, ack_path))
    child.start()
    deadline = time.monotonic() + 60
    while len(read_acks(ack_path)) < kill_after_acks:
        assert child.is_alive() and time.monotonic() < deadline, "the writer stopped before it was killed"
        time.sleep(0.001)
    time.sleep(random.uniform(0, 0.02))  # land anywhere: waiting for the gate, attaching, inserting, committing
    child.kill()
    child.join()
    assert child.exitcode == -9

    reopened = Store(db_path, lock_timeout=5)  # the dead child's lock file remains; the kernel released its flock
    acked = [int(p) for line in read_acks(ack_path) for p in line]
    stored = {j["pair_id"] for j in reopened.judgments(annotator_id=annotator)}
    assert set(acked) <= stored
    per_transaction = 1 if mode == "submit" else BATCH
    assert len(stored) in (len(acked), len(acked) + per_transaction)  # the write in flight is all there or absent
    judge(reopened, Judgment(pair_ids[-1], annotator, "tie"))  # and the database takes writes again
    assert reopened.count_judgments() == len(stored | {pair_ids[-1]})


def die_inside_transaction(path, annotator_id, pair_ids, inside):
    store = Store(path, migrate=False)
    with store.transaction("test transaction killed before commit") as con:
        for pair_id in pair_ids:
            con.execute(
                "INSERT INTO judgments (pair_id, annotator_id, choice, created_at, updated_at) VALUES (?, ?, 'a', ?, ?)",
                [pair_id, annotator_id, utcnow(), utcnow()],
            )
        inside.set()
        time.sleep(60)


def test_sigkill_inside_a_transaction_leaves_nothing_and_does_not_block(store, db_path):
    (annotator,) = annotators(store, "killed", 1)
    pair_ids = add_pairs(store, 20, "inside")
    inside = SPAWN.Event()
    child = SPAWN.Process(target=die_inside_transaction, args=(db_path, annotator, pair_ids, inside))
    child.start()
    assert inside.wait(60)
    assert f"pid {child.pid}" in Path(f"{db_path}.lock").read_text()
    child.kill()
    child.join()

    reopened = Store(db_path, lock_timeout=2)
    assert reopened.count_judgments() == 0
    judge(reopened, Judgment(pair_ids[0], annotator, "a"))
    assert reopened.count_judgments() == 1


# --- a holder beyond the timeout, and a connection outside the gate -------------------------------------------------
def hold(path, how, ready, release):
    store = Store(path, migrate=False)
    with store.gate.held("long export") if how == "gate" else store.transaction("long export"):
        ready.set()
        release.wait(60)


@pytest.mark.parametrize("how", ["gate", "transaction"])
def test_lock_held_beyond_the_timeout_names_the_holder(store, db_path, how):
    ready, release = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=hold, args=(db_path, how, ready, release))
    child.start()
    assert ready.wait(60)
    impatient = Store(db_path, lock_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreBusy) as busy:
        impatient.count_judgments()
    assert 0.5 <= time.monotonic() - started < 5
    assert f"pid {child.pid} (long export)" in str(busy.value)
    assert str(db_path) in str(busy.value)
    release.set()
    child.join(60)
    assert impatient.count_judgments() == 0


def foreign_connection(path, ready, seconds):
    con = duckdb.connect(str(path))
    ready.set()
    time.sleep(seconds)
    con.close()


def test_foreign_duckdb_connection_is_retried_until_it_closes(store, db_path):
    ready, hold_seconds = SPAWN.Event(), 2.0
    child = SPAWN.Process(target=foreign_connection, args=(db_path, ready, hold_seconds))
    child.start()
    assert ready.wait(60)
    held_since = time.monotonic()
    with pytest.raises(StoreBusy) as busy:
        Store(db_path, lock_timeout=0.3).count_judgments()
    assert f"PID {child.pid}" in str(busy.value)
    assert Store(db_path, lock_timeout=30).count_judgments() == 0
    assert time.monotonic() - held_since >= hold_seconds - 0.2  # it waited for the holder, then got in
    child.join(60)
