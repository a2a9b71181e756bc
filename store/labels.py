"""Annotators, leases and judgments: who labels what, and what they said."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from store.db import StoreError
from store.store import rows_as_dicts, sha256_hex, utcnow

CHOICES = ("a", "b", "tie", "both_bad")
STRENGTHS = ("slight", "clear")
ROLES = ("annotator", "admin", "import", "simulated")


@dataclass
class Annotator:
    id: int
    name: str
    role: str
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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
    def add_annotator(self, name: str, role: str = "annotator") -> tuple[Annotator, str | None]:
        """Create an annotator; returns it and its sign-in token (shown once, stored only as a hash).

        Import and simulated annotators sign nobody in and get no token.
        """
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        name = name.strip()
        if not name:
            raise StoreError("annotator name must not be empty")
        token = secrets.token_urlsafe(24) if role in ("annotator", "admin") else None
        with self.transaction("add annotator") as con:
            if con.execute("SELECT 1 FROM annotators WHERE name = ?", [name]).fetchone():
                raise StoreError(f"annotator {name!r} already exists")
            (annotator_id,) = con.execute(
                "INSERT INTO annotators (name, role, token_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                [name, role, hash_token(token) if token else None, utcnow()],
            ).fetchone()
        return Annotator(annotator_id, name, role, False), token

    def reset_token(self, name: str) -> str:
        token = secrets.token_urlsafe(24)
        with self.transaction("reset token") as con:
            found = con.execute(
                "UPDATE annotators SET token_hash = ? WHERE name = ? AND role IN ('annotator', 'admin') RETURNING id",
                [hash_token(token), name],
            ).fetchone()
        if not found:
            raise StoreError(f"no annotator or admin named {name!r}")
        return token

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

    def set_annotator_disabled(self, name: str, disabled: bool) -> None:
        with self.transaction("disable annotator") as con:
            found = con.execute(
                "UPDATE annotators SET disabled = ? WHERE name = ? RETURNING id", [disabled, name]
            ).fetchone()
        if not found:
            raise StoreError(f"no annotator named {name!r}")

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

    # --- assignment -------------------------------------------------------------------------------------------
    def next_pair(
        self, annotator_id: int, round_id: int | None = None, lease_seconds: float = 600, now: datetime | None = None
    ) -> dict | None:
        """Lease the next pair for this annotator and return it with its prompt and both responses.

        A pair is served while its judgments plus other annotators' live leases stay under its overlap target, never
        to someone who judged or skipped it. An annotator's own live lease is served again (a reload shows the same
        pair). Expired leases are dropped first, so abandoned pairs go back to the pool. `round_id` None means any.
        """
        now = now or utcnow()
        with self.transaction("lease next pair") as con:
            con.execute("DELETE FROM leases WHERE expires_at <= ?", [now])
            row = con.execute(
                """
                SELECT p.id FROM leases l JOIN pairs p ON p.id = l.pair_id
                WHERE l.annotator_id = ? AND p.status = 'open' AND (? IS NULL OR p.round_id = ?)
                  AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id AND j.annotator_id = ?)
                ORDER BY l.expires_at LIMIT 1
                """,
                [annotator_id, round_id, round_id, annotator_id],
            ).fetchone()
            if row is None:
                row = con.execute(
                    """
                    SELECT p.id FROM pairs p
                    WHERE p.status = 'open' AND (? IS NULL OR p.round_id = ?)
                      AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id AND j.annotator_id = ?)
                      AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.pair_id = p.id AND s.annotator_id = ?)
                      AND (SELECT count(*) FROM judgments j WHERE j.pair_id = p.id)
                        + (SELECT count(*) FROM leases l WHERE l.pair_id = p.id AND l.annotator_id <> ?)
                        < p.overlap_target
                    ORDER BY p.round_id DESC NULLS LAST, p.id LIMIT 1
                    """,
                    [round_id, round_id, annotator_id, annotator_id, annotator_id],
                ).fetchone()
            if row is None:
                return None
            pair_id = row[0]
            con.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (pair_id, annotator_id) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                [pair_id, annotator_id, now + timedelta(seconds=lease_seconds)],
            )
            return _pair_with_texts(con, pair_id)

    def get_pair(self, pair_id: int) -> dict | None:
        with self.transaction("read pair") as con:
            return _pair_with_texts(con, pair_id)

    def skip_pair(self, pair_id: int, annotator_id: int) -> None:
        """This annotator will not be served this pair again; the lease goes back to the pool."""
        with self.transaction("skip pair") as con:
            con.execute(
                "INSERT INTO skips VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [pair_id, annotator_id, utcnow()]
            )
            con.execute("DELETE FROM leases WHERE pair_id = ? AND annotator_id = ?", [pair_id, annotator_id])

    # --- judgments --------------------------------------------------------------------------------------------
    def submit_judgment(self, judgment: Judgment) -> int:
        """Record a judgment; a resubmit by the same annotator for the same pair updates it. Returns its id.

        Idempotent: a double click, a rerun or a second tab leave exactly one row per pair and annotator. When the
        call returns, the judgment is committed to disk.
        """
        _validate(judgment)
        now = utcnow()
        with self.transaction("submit judgment") as con:
            pair = con.execute("SELECT overlap_target FROM pairs WHERE id = ?", [judgment.pair_id]).fetchone()
            if pair is None:
                raise StoreError(f"pair {judgment.pair_id} does not exist")
            annotator = con.execute("SELECT disabled FROM annotators WHERE id = ?", [judgment.annotator_id]).fetchone()
            if annotator is None:
                raise StoreError(f"annotator {judgment.annotator_id} does not exist")
            if annotator[0]:
                raise StoreError(f"annotator {judgment.annotator_id} is disabled")
            (judgment_id,) = con.execute(
                """
                INSERT INTO judgments (pair_id, annotator_id, choice, strength, rationale, shown_left, seconds_spent,
                                       created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (pair_id, annotator_id) DO UPDATE SET
                    choice = excluded.choice, strength = excluded.strength, rationale = excluded.rationale,
                    shown_left = excluded.shown_left, seconds_spent = excluded.seconds_spent,
                    updated_at = excluded.updated_at
                RETURNING id
                """,
                [
                    judgment.pair_id,
                    judgment.annotator_id,
                    judgment.choice,
                    judgment.strength,
                    judgment.rationale,
                    judgment.shown_left,
                    judgment.seconds_spent,
                    now,
                    now,
                ],
            ).fetchone()
            con.execute(
                "DELETE FROM leases WHERE pair_id = ? AND annotator_id = ?", [judgment.pair_id, judgment.annotator_id]
            )
            _refresh_pair_status(con, judgment.pair_id)
            return judgment_id

    def undo_last_judgment(self, annotator_id: int) -> int | None:
        """Delete this annotator's most recent judgment and reopen its pair; returns the pair id, or None."""
        with self.transaction("undo judgment") as con:
            row = con.execute(
                "SELECT id, pair_id FROM judgments WHERE annotator_id = ? ORDER BY updated_at DESC, id DESC LIMIT 1",
                [annotator_id],
            ).fetchone()
            if row is None:
                return None
            con.execute("DELETE FROM judgments WHERE id = ?", [row[0]])
            _refresh_pair_status(con, row[1])
            return row[1]

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
    def adjudicate(self, pair_id: int, admin_id: int, choice: str, note: str | None = None) -> None:
        """Set the final label of a pair; it overrides the annotators' judgments in export."""
        if choice not in CHOICES:
            raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
        with self.transaction("adjudicate") as con:
            con.execute(
                "INSERT INTO adjudications VALUES (?, ?, ?, ?, ?) ON CONFLICT (pair_id) DO UPDATE SET "
                "admin_id = excluded.admin_id, choice = excluded.choice, note = excluded.note, "
                "created_at = excluded.created_at",
                [pair_id, admin_id, choice, note, utcnow()],
            )

    def set_setting(self, key: str, value) -> None:
        with self.transaction("write setting") as con:
            con.execute(
                "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at",
                [key, json.dumps(value), utcnow()],
            )

    def get_setting(self, key: str, default=None):
        with self.transaction("read setting") as con:
            row = con.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default


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
    rows = rows_as_dicts(
        con.execute(
            """
            SELECT p.id, p.round_id, p.prompt_id, p.strategy, p.overlap_target, p.status, p.gold_choice,
                   pr.messages, ra.id AS response_a_id, ra.text AS response_a, rb.id AS response_b_id,
                   rb.text AS response_b, ra.completion_tokens AS response_a_tokens,
                   rb.completion_tokens AS response_b_tokens
            FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
            JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
            WHERE p.id = ?
            """,
            [pair_id],
        )
    )
    if not rows:
        return None
    pair = rows[0]
    pair["messages"] = json.loads(pair["messages"])
    return pair
