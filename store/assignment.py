"""Serving pairs and recording what annotators say: leases, submit, skip, undo and the recent history.

The overlap rule is held here, inside each transaction, whoever calls (the app, a simulated judge, a script):

* A pair is leased to an annotator only while its judgments plus other annotators' live leases stay under its overlap
  target, and never to someone who judged or skipped it. An annotator holds at most one lease (the key of `leases`):
  leasing another pair gives the previous one back.
* A new judgment needs the annotator's live lease on the pair and room under the target, or it is refused with
  `PairReassigned` ("this pair was reassigned"). A re-submit of one's own judgment is an update and needs neither.
* Undo deletes one's latest judgment or skip and leases that pair back in the same transaction, so nobody else can take
  the place it frees.

A round is open while it is the latest one; judgments in older rounds no longer change (no update, no undo). Pairs
outside rounds (imports) are always open. Methods taking `actor` check the session first (`store/sessions.py`).

    pair = store.next_pair(annotator_id, latest=True, lease_seconds=120)
    judgment_id, upcoming = store.submit_and_next(Judgment(pair["id"], annotator_id, "a"), lease_seconds=120)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb

from store.db import StoreError
from store.labels import Judgment, pair_with_texts, refresh_pair_status, validate_judgment
from store.sessions import Actor, authorize
from store.store import rows_as_dicts, utcnow

DEFAULT_LEASE_SECONDS = 600


class PairReassigned(StoreError):
    """A new judgment came without a live lease, or its pair has all the judgments it needs; nothing was recorded."""


class AssignmentMixin:
    # --- leases -----------------------------------------------------------------------------------------------
    def next_pair(
        self,
        annotator_id: int,
        round_id: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: datetime | None = None,
        *,
        latest: bool = False,
        actor: Actor | None = None,
    ) -> dict | None:
        """Lease the next pair for this annotator and return it with its prompt and both responses.

        The annotator's own live lease is served again (a reload shows the same pair); otherwise the first pair with
        room under its overlap target. `round_id` None means any round; `latest` means the latest round, whichever it
        is when the transaction runs. Expired leases do not count, so abandoned pairs go back to the pool.
        """
        now = now or utcnow()
        with self.transaction("lease next pair") as con:
            _authorize_for(con, actor, annotator_id, now)
            return _lease_next(con, annotator_id, _round_filter(con, round_id, latest), lease_seconds, now)

    def hold_pair(
        self,
        annotator_id: int,
        pair_id: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: datetime | None = None,
        actor: Actor | None = None,
    ) -> bool:
        """Keep (or take again) this annotator's lease on this pair for `lease_seconds` from now: what the app's
        heartbeat sends while the pair is on screen. True when held; False when the annotator judged or skipped it, or
        when it has no room left for them (it was reassigned). Taking it gives back any other pair they held."""
        now = now or utcnow()
        with self.transaction("hold pair") as con:
            _authorize_for(con, actor, annotator_id, now)
            if _room(con, pair_id, annotator_id, now) <= 0:
                return False
            _lease(con, annotator_id, pair_id, now + timedelta(seconds=lease_seconds))
            return True

    def release_lease(self, annotator_id: int, pair_id: int | None = None, actor: Actor | None = None) -> bool:
        """Give back this annotator's lease (only if it is on `pair_id`, when given): a closed tab. True if one was."""
        with self.transaction("release lease") as con:
            _authorize_for(con, actor, annotator_id, utcnow())
            return bool(con.execute(
                "DELETE FROM leases WHERE annotator_id = ? AND (? IS NULL OR pair_id = ?) RETURNING pair_id",
                [annotator_id, pair_id, pair_id],
            ).fetchall())

    def get_pair(self, pair_id: int) -> dict | None:
        with self.transaction("read pair") as con:
            return pair_with_texts(con, pair_id)

    # --- judgments and skips ----------------------------------------------------------------------------------
    def submit_judgment(self, judgment: Judgment, actor: Actor | None = None, now: datetime | None = None) -> int:
        """Record a judgment (see the module docstring for when it is refused); returns its id.

        Idempotent: a double click, a rerun or a second tab leave exactly one row per pair and annotator (a re-submit
        updates it). When the call returns, the judgment is committed to disk.
        """
        validate_judgment(judgment)
        now = now or utcnow()
        with self.transaction("submit judgment") as con:
            _authorize_for(con, actor, judgment.annotator_id, now)
            return _submit(con, judgment, now, authorized=actor is not None)

    def submit_and_next(
        self,
        judgment: Judgment,
        round_id: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: datetime | None = None,
        *,
        latest: bool = False,
        actor: Actor | None = None,
    ) -> tuple[int, dict | None]:
        """`submit_judgment`, then `next_pair` for the same annotator, in one transaction: (judgment id, next pair)."""
        validate_judgment(judgment)
        now = now or utcnow()
        with self.transaction("submit judgment and lease next") as con:
            _authorize_for(con, actor, judgment.annotator_id, now)
            judgment_id = _submit(con, judgment, now, authorized=actor is not None)
            rounds = _round_filter(con, round_id, latest)
            return judgment_id, _lease_next(con, judgment.annotator_id, rounds, lease_seconds, now)

    def skip_pair(self, pair_id: int, annotator_id: int, actor: Actor | None = None) -> None:
        """This annotator will not be served this pair again; the lease goes back to the pool."""
        with self.transaction("skip pair") as con:
            _authorize_for(con, actor, annotator_id, utcnow())
            _skip(con, pair_id, annotator_id, utcnow())

    def skip_and_next(
        self,
        pair_id: int,
        annotator_id: int,
        round_id: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: datetime | None = None,
        *,
        latest: bool = False,
        actor: Actor | None = None,
    ) -> dict | None:
        """`skip_pair`, then `next_pair`, in one transaction; returns the next pair."""
        now = now or utcnow()
        with self.transaction("skip pair and lease next") as con:
            _authorize_for(con, actor, annotator_id, now)
            _skip(con, pair_id, annotator_id, now)
            return _lease_next(con, annotator_id, _round_filter(con, round_id, latest), lease_seconds, now)

    def undo_last(
        self,
        annotator_id: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: datetime | None = None,
        actor: Actor | None = None,
    ) -> dict | None:
        """Take back this annotator's latest judgment or skip in an open round, and lease its pair back to them.

        Returns None when there is nothing to undo, else {"undone": "judgment" or "skip", "pair_id", "pair" (with
        texts; None when an undone skip's pair has meanwhile got all its judgments from others), and for a judgment
        the "choice", "strength", "rationale" and "shown_left" it had}, so the app can show the pair as it was.
        "Latest" is by when the pair was first judged: editing an older judgment does not make it the one undone.
        """
        now = now or utcnow()
        with self.transaction("undo") as con:
            _authorize_for(con, actor, annotator_id, now)
            undone = _latest_action(con, annotator_id)
            if undone is None:
                return None
            pair_id = undone["pair_id"]
            if undone["undone"] == "judgment":
                con.execute("DELETE FROM judgments WHERE id = ?", [undone.pop("id")])
                refresh_pair_status(con, pair_id)
            else:
                con.execute("DELETE FROM skips WHERE pair_id = ? AND annotator_id = ?", [pair_id, annotator_id])
            undone["pair"] = None
            if _room(con, pair_id, annotator_id, now) > 0:
                _lease(con, annotator_id, pair_id, now + timedelta(seconds=lease_seconds))
                undone["pair"] = pair_with_texts(con, pair_id)
            return undone

    def recent_judgments(self, annotator_id: int, limit: int = 10, actor: Actor | None = None) -> list[dict]:
        """This annotator's latest judgments, newest first (by when first made): pair_id, round_id, choice, strength,
        rationale, shown_left, created_at, updated_at, `prompt` (the last user turn) and `editable` (its round is
        open, so a re-submit may still change it)."""
        with self.transaction("recent judgments") as con:
            _authorize_for(con, actor, annotator_id, utcnow())
            rows = rows_as_dicts(con.execute(
                """
                SELECT j.pair_id, p.round_id, j.choice, j.strength, j.rationale, j.shown_left, j.created_at,
                       j.updated_at, pr.messages,
                       p.status <> 'retired' AND (p.round_id IS NULL OR p.round_id = (SELECT max(id) FROM rounds))
                           AS editable
                FROM judgments j JOIN pairs p ON p.id = j.pair_id JOIN prompts pr ON pr.id = p.prompt_id
                WHERE j.annotator_id = ? ORDER BY j.created_at DESC, j.id DESC LIMIT ?
                """,
                [annotator_id, limit],
            ))
        for row in rows:
            turns = json.loads(row.pop("messages"))
            row["prompt"] = next((t.get("content", "") for t in reversed(turns) if t.get("role") == "user"), "")
        return rows


# --- inside a transaction ---------------------------------------------------------------------------------------
def _authorize_for(con: duckdb.DuckDBPyConnection, actor: Actor | None, annotator_id: int, now: datetime) -> None:
    """An actor may act only for itself, through a live session."""
    if actor is not None and actor.annotator_id != annotator_id:
        raise StoreError(f"annotator {actor.annotator_id} cannot act for annotator {annotator_id}")
    authorize(con, actor, now=now)


def _latest_round(con: duckdb.DuckDBPyConnection) -> int | None:
    return con.execute("SELECT max(id) FROM rounds").fetchone()[0]


def _round_filter(con: duckdb.DuckDBPyConnection, round_id: int | None, latest: bool) -> int | None:
    return _latest_round(con) if latest else round_id


def _lease(con: duckdb.DuckDBPyConnection, annotator_id: int, pair_id: int, expires_at: datetime) -> None:
    """The annotator's one lease, now on this pair (whatever they held before goes back to the pool)."""
    con.execute(
        "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (annotator_id) "
        "DO UPDATE SET pair_id = excluded.pair_id, expires_at = excluded.expires_at",
        [annotator_id, pair_id, expires_at],
    )


def _pair_state(con: duckdb.DuckDBPyConnection, pair_id: int, annotator_id: int, now: datetime) -> dict | None:
    """One pair as the overlap rule sees it, for one annotator: overlap_target, status, round_id, `judged` (its
    judgments), `held` (other annotators' live leases), `mine` (this annotator's judgment id, if any), `skipped`,
    `leased` (this annotator's live lease on it). One statement of constant-filtered lookups (each scalar subquery is
    independent of the row, so nothing is joined against whole tables)."""
    rows = rows_as_dicts(con.execute(
        """
        SELECT overlap_target, status, round_id,
               (SELECT count(*) FROM judgments WHERE pair_id = $pair) AS judged,
               (SELECT count(*) FROM leases WHERE pair_id = $pair AND annotator_id <> $me AND expires_at > $now)
                   AS held,
               (SELECT id FROM judgments WHERE pair_id = $pair AND annotator_id = $me) AS mine,
               EXISTS (SELECT 1 FROM skips WHERE pair_id = $pair AND annotator_id = $me) AS skipped,
               EXISTS (SELECT 1 FROM leases WHERE annotator_id = $me AND pair_id = $pair AND expires_at > $now)
                   AS leased
        FROM pairs WHERE id = $pair
        """,
        {"pair": pair_id, "me": annotator_id, "now": now},
    ))
    return rows[0] if rows else None


def _room(con: duckdb.DuckDBPyConnection, pair_id: int, annotator_id: int, now: datetime) -> int:
    """How many annotators, this one included, could still lease the pair: its overlap target less its judgments and
    other annotators' live leases; 0 if it is not open or this annotator judged or skipped it."""
    pair = _pair_state(con, pair_id, annotator_id, now)
    if pair is None or pair["status"] != "open" or pair["mine"] is not None or pair["skipped"]:
        return 0
    return pair["overlap_target"] - pair["judged"] - pair["held"]


def _lease_next(
    con: duckdb.DuckDBPyConnection, annotator_id: int, round_id: int | None, lease_seconds: float, now: datetime
) -> dict | None:
    """Lease the annotator's next pair (see `AssignmentMixin.next_pair`). Expired leases are simply not counted: the
    table holds one row per annotator at most, replaced by their next lease."""
    pair_id = None
    own = con.execute("SELECT pair_id FROM leases WHERE annotator_id = ? AND expires_at > ?",
                      [annotator_id, now]).fetchone()
    if own is not None:  # served again while it is open and in the round asked for
        pair = _pair_state(con, own[0], annotator_id, now)
        if pair is not None and pair["status"] == "open" and round_id in (None, pair["round_id"]) \
                and pair["mine"] is None and not pair["skipped"]:
            pair_id = own[0]
    if pair_id is None:
        found = con.execute(
            """
            WITH open_pairs AS (
                SELECT id, round_id, overlap_target FROM pairs
                WHERE status = 'open' AND ($round IS NULL OR round_id = $round)
            ), judged AS (
                SELECT pair_id, count(*) AS n, bool_or(annotator_id = $me) AS mine FROM judgments
                WHERE pair_id IN (SELECT id FROM open_pairs) GROUP BY pair_id
            ), held AS (
                SELECT pair_id, count(*) AS n FROM leases WHERE annotator_id <> $me AND expires_at > $now
                GROUP BY pair_id
            )
            SELECT p.id FROM open_pairs p LEFT JOIN judged j ON j.pair_id = p.id LEFT JOIN held h ON h.pair_id = p.id
            WHERE NOT coalesce(j.mine, false)
              AND p.id NOT IN (SELECT pair_id FROM skips WHERE annotator_id = $me)
              AND coalesce(j.n, 0) + coalesce(h.n, 0) < p.overlap_target
            ORDER BY p.round_id DESC NULLS LAST, p.id LIMIT 1
            """,
            {"round": round_id, "me": annotator_id, "now": now},
        ).fetchone()
        if found is None:
            return None
        pair_id = found[0]
    _lease(con, annotator_id, pair_id, now + timedelta(seconds=lease_seconds))
    return pair_with_texts(con, pair_id)


def _submit(con: duckdb.DuckDBPyConnection, judgment: Judgment, now: datetime, authorized: bool) -> int:
    """Record the judgment under the overlap rule; `authorized`: the annotator's session was checked already."""
    pair_id, annotator_id = judgment.pair_id, judgment.annotator_id
    pair = _pair_state(con, pair_id, annotator_id, now)
    if pair is None:
        raise StoreError(f"pair {pair_id} does not exist")
    if not authorized:
        annotator = con.execute("SELECT disabled FROM annotators WHERE id = ?", [annotator_id]).fetchone()
        if annotator is None:
            raise StoreError(f"annotator {annotator_id} does not exist")
        if annotator[0]:
            raise StoreError(f"annotator {annotator_id} is disabled")
    values = [judgment.choice, judgment.strength, judgment.rationale, judgment.shown_left, judgment.seconds_spent, now]
    judged = pair["judged"]
    if pair["mine"] is not None:
        latest = _latest_round(con)
        if pair["round_id"] is not None and pair["round_id"] != latest:
            raise StoreError(f"pair {pair_id} belongs to round {pair['round_id']}, which closed when round {latest} "
                             "started: its judgments no longer change")
        con.execute(
            "UPDATE judgments SET choice = ?, strength = ?, rationale = ?, shown_left = ?, seconds_spent = ?, "
            "updated_at = ? WHERE id = ?",
            [*values, pair["mine"]],
        )
        judgment_id = pair["mine"]
    else:
        if pair["status"] == "retired":
            raise PairReassigned(f"This pair was reassigned: pair {pair_id} was retired. Your choice was not recorded.")
        if judged >= pair["overlap_target"]:
            raise PairReassigned(f"This pair was reassigned: pair {pair_id} has all the judgments it needs. Your "
                                 "choice was not recorded.")
        if not pair["leased"]:
            raise PairReassigned(f"This pair was reassigned: your hold on pair {pair_id} ended (its tab was closed, "
                                 "it sat idle too long, or you moved on in another tab). Your choice was not recorded.")
        (judgment_id,) = con.execute(
            """
            INSERT INTO judgments (pair_id, annotator_id, choice, strength, rationale, shown_left, seconds_spent,
                                   updated_at, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
            """,
            [pair_id, annotator_id, *values, now],
        ).fetchone()
        judged += 1
        con.execute("DELETE FROM leases WHERE annotator_id = ?", [annotator_id])
        if pair["status"] == "open" and judged >= pair["overlap_target"]:
            con.execute("UPDATE pairs SET status = 'complete' WHERE id = ?", [pair_id])
    return judgment_id


def _skip(con: duckdb.DuckDBPyConnection, pair_id: int, annotator_id: int, now: datetime) -> None:
    if con.execute("SELECT 1 FROM pairs WHERE id = ?", [pair_id]).fetchone() is None:
        raise StoreError(f"pair {pair_id} does not exist")
    if con.execute(
        "SELECT 1 FROM judgments WHERE pair_id = ? AND annotator_id = ?", [pair_id, annotator_id]
    ).fetchone() is None:  # a skip from a stale screen leaves a judgment made meanwhile alone
        con.execute("INSERT INTO skips VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [pair_id, annotator_id, now])
    con.execute("DELETE FROM leases WHERE annotator_id = ? AND pair_id = ?", [annotator_id, pair_id])


def _latest_action(con: duckdb.DuckDBPyConnection, annotator_id: int) -> dict | None:
    """The annotator's latest judgment or skip on a pair of an open round that is not retired."""
    rows = rows_as_dicts(con.execute(
        """
        WITH open_pairs AS (
            SELECT id FROM pairs
            WHERE status <> 'retired' AND (round_id IS NULL OR round_id = (SELECT max(id) FROM rounds))
        )
        SELECT * FROM (
            SELECT 'judgment' AS undone, j.id, j.pair_id, j.choice, j.strength, j.rationale, j.shown_left,
                   j.created_at AS acted_at
            FROM judgments j WHERE j.annotator_id = ? AND j.pair_id IN (SELECT id FROM open_pairs)
            UNION ALL
            SELECT 'skip', NULL, s.pair_id, NULL, NULL, NULL, NULL, s.created_at
            FROM skips s WHERE s.annotator_id = ? AND s.pair_id IN (SELECT id FROM open_pairs)
        ) ORDER BY acted_at DESC, id DESC NULLS LAST LIMIT 1
        """,
        [annotator_id, annotator_id],
    ))
    if not rows:
        return None
    action = rows[0]
    del action["acted_at"]
    if action["undone"] == "skip":
        for key in ("id", "choice", "strength", "rationale", "shown_left"):
            del action[key]
    return action
