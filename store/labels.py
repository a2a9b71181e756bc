"""Annotators, judgments, adjudications and settings: who labels, what they said, and what admins decided.

Methods that change something for a person take `actor` (see `store/sessions.py`): given, the actor's session and role
are checked in the same transaction as the change; None is a trusted local caller (CLI, training code, tests). Leasing
pairs and submitting judgments live in `store/assignment.py`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import duckdb

from store.db import StoreError
from store.sessions import PEOPLE, Actor, Annotator, authorize, end_sessions_of
from store.store import rows_as_dicts, sha256_hex, utcnow

CHOICES = ("a", "b", "tie", "both_bad")
STRENGTHS = ("slight", "clear")
ROLES = ("annotator", "admin", "import", "simulated")
ADMIN = ("admin",)

__all__ = ["CHOICES", "ROLES", "STRENGTHS", "Annotator", "Judgment", "LabelsMixin", "hash_token"]


@dataclass
class Judgment:
    pair_id: int
    annotator_id: int
    choice: str
    strength: str | None = None
    rationale: str | None = None
    shown_left: str | None = None
    seconds_spent: float | None = None


def hash_token(token: str) -> str:
    return sha256_hex(token)


class LabelsMixin:
    # --- annotators -------------------------------------------------------------------------------------------
    def add_annotator(self, name: str, role: str = "annotator", actor: Actor | None = None
                      ) -> tuple[Annotator, str | None]:
        """Create an annotator; returns it and its sign-in token (shown once, stored only as a hash).

        Import and simulated annotators sign nobody in and get no token. An `actor` must be a live admin.
        """
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        name = name.strip()
        if not name:
            raise StoreError("annotator name must not be empty")
        token = secrets.token_urlsafe(24) if role in PEOPLE else None
        with self.transaction("add annotator") as con:
            authorize(con, actor, ADMIN)
            if con.execute("SELECT 1 FROM annotators WHERE name = ?", [name]).fetchone():
                raise StoreError(f"annotator {name!r} already exists")
            (annotator_id,) = con.execute(
                "INSERT INTO annotators (name, role, token_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                [name, role, hash_token(token) if token else None, utcnow()],
            ).fetchone()
        return Annotator(annotator_id, name, role, False), token

    def reset_token(self, name: str, actor: Actor | None = None) -> str:
        """A new sign-in token for this annotator or admin; the old token and every session it started stop working."""
        token = secrets.token_urlsafe(24)
        with self.transaction("reset token") as con:
            authorize(con, actor, ADMIN)
            found = con.execute(
                "UPDATE annotators SET token_hash = ? WHERE name = ? AND role IN ('annotator', 'admin') RETURNING id",
                [hash_token(token), name],
            ).fetchone()
            if not found:
                raise StoreError(f"no annotator or admin named {name!r}")
            end_sessions_of(con, found[0])
        return token

    def set_annotator_disabled(self, name: str, disabled: bool, actor: Actor | None = None) -> None:
        """Disable (or enable) an annotator. Disabling ends their sessions and releases the pair they held."""
        with self.transaction("disable annotator") as con:
            authorize(con, actor, ADMIN)
            annotator_id = _annotator_id(con, name)
            if disabled and actor is not None and actor.annotator_id == annotator_id:
                raise StoreError("you cannot disable yourself")
            con.execute("UPDATE annotators SET disabled = ? WHERE id = ?", [disabled, annotator_id])
            if disabled:
                end_sessions_of(con, annotator_id)
                con.execute("DELETE FROM leases WHERE annotator_id = ?", [annotator_id])

    def set_annotator_role(self, name: str, role: str, actor: Actor | None = None) -> None:
        """Make a person an annotator or an admin. A lowered role holds from that person's next action on."""
        if role not in PEOPLE:
            raise StoreError(f"role must be one of {', '.join(PEOPLE)}, not {role!r}")
        with self.transaction("change role") as con:
            authorize(con, actor, ADMIN)
            annotator_id = _annotator_id(con, name)
            if actor is not None and actor.annotator_id == annotator_id and role != "admin":
                raise StoreError("you cannot take away your own admin role")
            found = con.execute(
                "UPDATE annotators SET role = ? WHERE id = ? AND role IN ('annotator', 'admin') RETURNING id",
                [role, annotator_id],
            ).fetchone()
            if not found:
                raise StoreError(f"{name!r} is not a person (import and simulated annotators keep their role)")

    def ensure_annotator(self, name: str, role: str) -> Annotator:
        """The annotator with this name, created (without a token) if missing: for import and simulated judges."""
        with self.transaction("ensure annotator") as con:
            annotator_id = self._ensure_annotator(con, name, role)
        return Annotator(annotator_id, name, role, False)

    def _ensure_annotator(self, con: duckdb.DuckDBPyConnection, name: str, role: str) -> int:
        row = con.execute("SELECT id FROM annotators WHERE name = ?", [name]).fetchone()
        if row:
            return row[0]
        return con.execute(
            "INSERT INTO annotators (name, role, created_at) VALUES (?, ?, ?) RETURNING id", [name, role, utcnow()]
        ).fetchone()[0]

    def authenticate(self, token: str) -> Annotator | None:
        """The enabled annotator or admin this token signs in, or None."""
        if not token:
            return None
        with self.transaction("sign in") as con:
            row = con.execute(
                "SELECT id, name, role, disabled FROM annotators "
                "WHERE token_hash = ? AND role IN ('annotator', 'admin')",
                [hash_token(token.strip())],
            ).fetchone()
        if row is None or row[3]:
            return None
        return Annotator(*row)

    def get_annotator(self, name: str) -> Annotator | None:
        with self.transaction("read annotator") as con:
            row = con.execute("SELECT id, name, role, disabled FROM annotators WHERE name = ?", [name]).fetchone()
        return Annotator(*row) if row else None

    def list_annotators(self) -> list[dict]:
        """Every annotator with judgment count and median seconds per judgment."""
        with self.transaction("list annotators") as con:
            return rows_as_dicts(
                con.execute(
                    """
                    SELECT a.id, a.name, a.role, a.disabled, a.created_at,
                           count(j.id) AS judgments,
                           median(j.seconds_spent) AS median_seconds,
                           max(j.updated_at) AS last_judgment_at
                    FROM annotators a LEFT JOIN judgments j ON j.annotator_id = a.id
                    GROUP BY ALL ORDER BY a.name
                    """
                )
            )

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


def _annotator_id(con: duckdb.DuckDBPyConnection, name: str) -> int:
    row = con.execute("SELECT id FROM annotators WHERE name = ?", [name]).fetchone()
    if row is None:
        raise StoreError(f"no annotator named {name!r}")
    return row[0]


def _validate(judgment: Judgment) -> None:
    if judgment.choice not in CHOICES:
        raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {judgment.choice!r}")
    if judgment.strength is not None and judgment.strength not in STRENGTHS:
        raise StoreError(f"strength must be one of {', '.join(STRENGTHS)} or empty, not {judgment.strength!r}")
    if judgment.shown_left is not None and judgment.shown_left not in ("a", "b"):
        raise StoreError(f"shown_left must be 'a' or 'b', not {judgment.shown_left!r}")


def _refresh_pair_status(con: duckdb.DuckDBPyConnection, pair_id: int) -> None:
    con.execute(
        """
        UPDATE pairs SET status = CASE
            WHEN (SELECT count(*) FROM judgments WHERE pair_id = ?) >= overlap_target THEN 'complete' ELSE 'open' END
        WHERE id = ? AND status <> 'retired'
        """,
        [pair_id, pair_id],
    )


def _pair_with_texts(con: duckdb.DuckDBPyConnection, pair_id: int) -> dict | None:
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
