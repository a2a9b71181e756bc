"""Judgments, adjudications and settings: what annotators said, what admins decided, and the app's settings.

Methods that change something for a person take `actor` (see `store/sessions.py`): given, the actor's session and role
are checked in the same transaction as the change; None is a trusted local caller (CLI, training code, tests). Leasing
pairs and submitting judgments one at a time live in `store/assignment.py`; accounts in `store/annotators.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb

from store.db import StoreError
from store.prompts import insert_rows
from store.sessions import Actor, Annotator, authorize
from store.store import rows_as_dicts, utcnow

CHOICES = ("a", "b", "tie", "both_bad")
STRENGTHS = ("slight", "clear")
ADMIN = ("admin",)

__all__ = ["CHOICES", "STRENGTHS", "Annotator", "Judgment", "LabelsMixin"]


@dataclass
class Judgment:
    pair_id: int
    annotator_id: int
    choice: str
    strength: str | None = None
    rationale: str | None = None
    shown_left: str | None = None
    seconds_spent: float | None = None


class LabelsMixin:

    # --- judgments --------------------------------------------------------------------------------------------
    def judgments(self, pair_id: int | None = None, annotator_id: int | None = None) -> list[dict]:
        with self.transaction("read judgments") as con:
            return rows_as_dicts(
                con.execute(
                    "SELECT * FROM judgments WHERE (? IS NULL OR pair_id = ?) AND (? IS NULL OR annotator_id = ?) "
                    "ORDER BY id",
                    [pair_id, pair_id, annotator_id, annotator_id],
                )
            )

    def count_judgments(self) -> int:
        with self.transaction("count judgments") as con:
            return con.execute("SELECT count(*) FROM judgments").fetchone()[0]

    # --- review -----------------------------------------------------------------------------------------------
    def adjudicate(self, pair_id: int, admin_id: int, choice: str, note: str | None = None,
                   actor: Actor | None = None) -> None:
        """Set the final label of a pair; it overrides the annotators' judgments in export. An `actor` must be the
        live admin `admin_id`."""
        if choice not in CHOICES:
            raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
        if actor is not None and actor.annotator_id != admin_id:
            raise StoreError(f"annotator {actor.annotator_id} cannot adjudicate in the name of {admin_id}")
        with self.transaction("adjudicate") as con:
            authorize(con, actor, ADMIN)
            con.execute(
                "INSERT INTO adjudications VALUES (?, ?, ?, ?, ?) ON CONFLICT (pair_id) DO UPDATE SET "
                "admin_id = excluded.admin_id, choice = excluded.choice, note = excluded.note, "
                "created_at = excluded.created_at",
                [pair_id, admin_id, choice, note, utcnow()],
            )

    def set_setting(self, key: str, value, actor: Actor | None = None) -> None:
        """Store a setting (JSON); an `actor` must be a live admin."""
        with self.transaction("write setting") as con:
            authorize(con, actor, ADMIN)
            con.execute(
                "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at",
                [key, json.dumps(value), utcnow()],
            )

    def get_setting(self, key: str, default=None):
        with self.transaction("read setting") as con:
            row = con.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def add_judgments_bulk(self, items: list[Judgment]) -> int:
        """Insert many judgments in one statement, for simulations and benchmarks (the UI uses submit_judgment).

        Every pair and annotator must exist and each (pair, annotator) must be new; pair statuses are refreshed once.
        """
        for judgment in items:
            validate_judgment(judgment)
        now = utcnow()
        pair_ids = sorted({j.pair_id for j in items})
        annotator_ids = sorted({j.annotator_id for j in items})
        with self.transaction("add judgments in bulk") as con:
            for table, ids in (("pairs", pair_ids), ("annotators", annotator_ids)):
                missing = con.execute(
                    f"SELECT unnest(?) AS id EXCEPT SELECT id FROM {table} ORDER BY id LIMIT 5", [ids]
                ).fetchall()
                if missing:
                    raise StoreError(f"{table} {[m[0] for m in missing]} do not exist")
            insert_rows(
                con,
                "judgments",
                [
                    dict(
                        pair_id=j.pair_id,
                        annotator_id=j.annotator_id,
                        choice=j.choice,
                        strength=j.strength,
                        rationale=j.rationale,
                        shown_left=j.shown_left,
                        seconds_spent=j.seconds_spent,
                        created_at=now,
                        updated_at=now,
                    )
                    for j in items
                ],
            )
            con.execute(
                """
                UPDATE pairs SET status = CASE WHEN c.n >= pairs.overlap_target THEN 'complete' ELSE 'open' END
                FROM (SELECT pair_id, count(*) AS n FROM judgments WHERE pair_id IN (SELECT unnest(?)) GROUP BY pair_id) c
                WHERE c.pair_id = pairs.id AND pairs.status <> 'retired'
                """,
                [pair_ids],
            )
        return len(items)


def validate_judgment(judgment: Judgment) -> None:
    if judgment.choice not in CHOICES:
        raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {judgment.choice!r}")
    if judgment.strength is not None and judgment.strength not in STRENGTHS:
        raise StoreError(f"strength must be one of {', '.join(STRENGTHS)} or empty, not {judgment.strength!r}")
    if judgment.shown_left is not None and judgment.shown_left not in ("a", "b"):
        raise StoreError(f"shown_left must be 'a' or 'b', not {judgment.shown_left!r}")


def refresh_pair_status(con: duckdb.DuckDBPyConnection, pair_id: int) -> None:
    con.execute(
        """
        UPDATE pairs SET status = CASE
            WHEN (SELECT count(*) FROM judgments WHERE pair_id = ?) >= overlap_target THEN 'complete' ELSE 'open' END
        WHERE id = ? AND status <> 'retired'
        """,
        [pair_id, pair_id],
    )


def pair_with_texts(con: duckdb.DuckDBPyConnection, pair_id: int) -> dict | None:
    """The pair with its prompt's messages and both texts, by point lookups on the ids (constant filters): a join would
    make DuckDB scan every stored text (about 10 ms of a submit on a database of 20,000 judgments)."""
    rows = rows_as_dicts(con.execute(
        "SELECT id, round_id, prompt_id, strategy, overlap_target, status, gold_choice, response_a_id, response_b_id "
        "FROM pairs WHERE id = ?",
        [pair_id],
    ))
    if not rows:
        return None
    pair = rows[0]
    messages, pair["response_a"], pair["response_b"], pair["response_a_tokens"], pair["response_b_tokens"] = con.execute(
        "SELECT (SELECT messages FROM prompts WHERE id = $prompt), (SELECT text FROM responses WHERE id = $a), "
        "(SELECT text FROM responses WHERE id = $b), (SELECT completion_tokens FROM responses WHERE id = $a), "
        "(SELECT completion_tokens FROM responses WHERE id = $b)",
        {"prompt": pair["prompt_id"], "a": pair["response_a_id"], "b": pair["response_b_id"]},
    ).fetchone()
    pair["messages"] = json.loads(messages)
    return pair
