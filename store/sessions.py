"""Sign-in sessions, and the authorization every action of the labeling app passes inside its own transaction.

A session is created when someone signs in (token or single sign-on). Its secret goes to the browser once, in a cookie
(see `labeler/cookies.py`); the store keeps only the secret's sha256, the session id. Store methods that act for a person
take an `actor` (annotator id + session id) and call `authorize` in the same transaction as the action, so a reset
token, a disabled account or a lowered role stop the very next action:

    actor = Actor(annotator.id, session_id)
    store.submit_judgment(judgment, actor=actor)       # raises SessionEnded / NotAllowed, changing nothing

`actor=None` is a trusted local caller: the `prefloop` CLI, training code, tests (they can open the file anyway).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from store.db import StoreError
from store.store import sha256_hex, utcnow

SESSION_IDLE = timedelta(days=7)  # a session unused this long ends
SESSION_MAX = timedelta(days=30)  # and none lives longer than this, however much it is used
_RENEW_AFTER = timedelta(hours=1)  # how stale `expires_at` may get before a use pushes it forward (a write)
PEOPLE = ("annotator", "admin")


@dataclass
class Annotator:
    id: int
    name: str
    role: str
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Actor:
    """Who performs an action through the app: the annotator and the session (sha256 of its secret) it came from."""

    annotator_id: int
    session_id: str


class NotAuthorized(StoreError):
    """The action was refused and nothing changed."""


class SessionEnded(NotAuthorized):
    """The session is over (signed out, expired, new token, account disabled): the person must sign in again."""


class NotAllowed(NotAuthorized):
    """The session is live, but its annotator's current role may not do this."""


def session_id_of(secret: str) -> str:
    return sha256_hex(secret)


def authorize(
    con: duckdb.DuckDBPyConnection, actor: Actor | None, roles: tuple[str, ...] = PEOPLE, now: datetime | None = None
) -> Annotator | None:
    """Check, inside the caller's transaction, that `actor`'s session is live and its annotator enabled with one of
    `roles`; returns that annotator as stored now (None for a trusted caller, `actor` None)."""
    if actor is None:
        return None
    now = now or utcnow()
    row = con.execute(
        "SELECT a.id, a.name, a.role, a.disabled, s.created_at, s.expires_at FROM sessions s "
        "JOIN annotators a ON a.id = s.annotator_id WHERE s.id = ? AND s.annotator_id = ?",
        [actor.session_id, actor.annotator_id],
    ).fetchone()
    if row is None:
        found = con.execute("SELECT name, disabled FROM annotators WHERE id = ?", [actor.annotator_id]).fetchone()
        if found and found[1]:
            raise SessionEnded(_disabled(found[0]))
        raise SessionEnded("Your session has ended (you signed out, or a new token was issued). Sign in again.")
    annotator_id, name, role, disabled, created_at, expires_at = row
    if disabled:
        raise SessionEnded(_disabled(name))
    if expires_at <= now:
        raise SessionEnded("Your session expired. Sign in again.")
    if role not in roles:
        raise NotAllowed(f"This needs the role {' or '.join(roles)}; {name!r} is an {role}.")
    renewed = min(now + SESSION_IDLE, created_at + SESSION_MAX)
    if renewed - expires_at > _RENEW_AFTER:
        con.execute("UPDATE sessions SET expires_at = ? WHERE id = ?", [renewed, actor.session_id])
    return Annotator(annotator_id, name, role, disabled)


def _disabled(name: str) -> str:
    return f"The account {name!r} is disabled, which ended its sessions. Ask an admin to enable it."


def end_sessions_of(con: duckdb.DuckDBPyConnection, annotator_id: int) -> None:
    con.execute("DELETE FROM sessions WHERE annotator_id = ?", [annotator_id])


class SessionsMixin:
    def start_session(self, annotator_id: int, now: datetime | None = None) -> tuple[Actor, str]:
        """A new session for this enabled annotator or admin: (its actor, the secret for the browser's cookie).

        Sessions past their expiry are deleted on the way (they could not be used anyway)."""
        secret = secrets.token_urlsafe(32)
        now = now or utcnow()
        with self.transaction("start session") as con:
            row = con.execute("SELECT role, disabled FROM annotators WHERE id = ?", [annotator_id]).fetchone()
            if row is None or row[0] not in PEOPLE or row[1]:
                raise SessionEnded(f"annotator {annotator_id} cannot sign in (missing, disabled or not a person)")
            con.execute("DELETE FROM sessions WHERE expires_at <= ?", [now])
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)",
                [session_id_of(secret), annotator_id, now, now + min(SESSION_IDLE, SESSION_MAX)],
            )
        return Actor(annotator_id, session_id_of(secret)), secret

    def resume_session(self, secret: str) -> tuple[Annotator, Actor] | None:
        """The annotator and actor of the live session whose cookie holds `secret`, or None (unknown, ended,
        expired or disabled): how a reload, a new tab or a typed link stay signed in."""
        if not secret:
            return None
        with self.transaction("resume session") as con:
            row = con.execute("SELECT annotator_id FROM sessions WHERE id = ?", [session_id_of(secret)]).fetchone()
            if row is None:
                return None
            actor = Actor(row[0], session_id_of(secret))
            try:
                annotator = authorize(con, actor)
            except NotAuthorized:
                return None
        return annotator, actor

    def check_session(self, actor: Actor, roles: tuple[str, ...] = PEOPLE) -> Annotator:
        """The actor's annotator as stored now; raises SessionEnded or NotAllowed (what admin pages check first)."""
        with self.transaction("check session") as con:
            return authorize(con, actor, roles)

    def end_session(self, session_id: str) -> None:
        """Sign out: this session stops working at once (the person's other sessions go on)."""
        with self.transaction("end session") as con:
            con.execute("DELETE FROM sessions WHERE id = ?", [session_id])
