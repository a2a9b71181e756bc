"""Annotators: accounts (people, importers, simulated judges), their roles and sign-in tokens.

A token is shown once and stored as a hash; resetting it or disabling the account ends the account's sessions
(`store/sessions.py`). Methods that change an account take `actor`: given, the actor's session and admin role are
checked in the same transaction as the change; None is a trusted local caller (CLI, training code, tests).
"""

from __future__ import annotations

import secrets

import duckdb

from store.db import StoreError
from store.sessions import PEOPLE, Actor, Annotator, authorize, end_sessions_of
from store.store import rows_as_dicts, sha256_hex, utcnow

ROLES = ("annotator", "admin", "import", "simulated")
ADMIN = ("admin",)


def hash_token(token: str) -> str:
    return sha256_hex(token)

def _annotator_id(con: duckdb.DuckDBPyConnection, name: str) -> int:
    row = con.execute("SELECT id FROM annotators WHERE name = ?", [name]).fetchone()
    if row is None:
        raise StoreError(f"no annotator named {name!r}")
    return row[0]


class AnnotatorsMixin:
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

    def annotator_for_token(self, token: str) -> Annotator | None:
        """Whoever this token belongs to, disabled or not: lets sign-in say *why* it refused a real token."""
        with self.transaction("look up token") as con:
            row = con.execute(
                "SELECT id, name, role, disabled FROM annotators "
                "WHERE token_hash = ? AND role IN ('annotator', 'admin')",
                [hash_token(token.strip())],
            ).fetchone()
        return Annotator(*row) if row else None
