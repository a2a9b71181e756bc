"""Sign-in sessions and the authorization every action passes inside its own transaction, on real DuckDB files.

    .venv/bin/python -m pytest tests/test_sessions.py -q

Every action the app takes for a person is called with that person's actor, then the session is ended in each way
(sign-out, new token, disabled account, expiry) or the role lowered: the very next call is refused and the database
is exactly as it was.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from store import Judgment, NotAllowed, SessionEnded, StoreError
from store.sessions import SESSION_IDLE, SESSION_MAX
from store.store import utcnow
from tests.labeling_data import make_round, simple_items
from tests.test_store import select


@pytest.fixture
def world(store):
    """A round of four pairs, an admin and two annotators, each person with a live session."""
    _, pairs = make_round(store, simple_items(4, "auth"))
    root, root_token = store.add_annotator("root", "admin")
    alice, alice_token = store.add_annotator("alice")
    bob, _ = store.add_annotator("bob")
    actors = {name: store.start_session(person.id)[0] for name, person in (("root", root), ("alice", alice))}
    return dict(pairs=pairs, root=root, alice=alice, bob=bob, actors=actors,
                tokens={"root": root_token, "alice": alice_token})


def snapshot(store) -> dict:
    """Everything an action could change, to compare before and after a refused one."""
    tables = ["annotators", "judgments", "skips", "leases", "adjudications", "settings", "exports", "pairs"]
    return {table: select(store, f"SELECT * FROM {table} ORDER BY ALL") for table in tables}


ADMIN_ACTIONS = {
    "add annotator": lambda s, w, actor: s.add_annotator("carol", actor=actor),
    "disable": lambda s, w, actor: s.set_annotator_disabled("bob", True, actor=actor),
    "change role": lambda s, w, actor: s.set_annotator_role("bob", "admin", actor=actor),
    "reset token": lambda s, w, actor: s.reset_token("bob", actor=actor),
    "adjudicate": lambda s, w, actor: s.adjudicate(w["pairs"][3], actor.annotator_id, "tie", actor=actor),
    "settings": lambda s, w, actor: s.set_setting("guidelines", "new", actor=actor),
    "export read": lambda s, w, actor: s.export_rows(None, actor=actor),
    "export record": lambda s, w, actor: s.register_export("x", "/tmp/x", None, {}, {}, actor=actor),
}
LABEL_ACTIONS = {
    "next pair": lambda s, w, actor: s.next_pair(actor.annotator_id, latest=True, actor=actor),
    "hold": lambda s, w, actor: s.hold_pair(actor.annotator_id, w["pairs"][1], actor=actor),
    "release": lambda s, w, actor: s.release_lease(actor.annotator_id, actor=actor),
    "submit": lambda s, w, actor: s.submit_judgment(Judgment(w["pairs"][0], actor.annotator_id, "a"), actor=actor),
    "submit and next": lambda s, w, actor: s.submit_and_next(Judgment(w["pairs"][0], actor.annotator_id, "b"),
                                                             latest=True, actor=actor),
    "skip": lambda s, w, actor: s.skip_pair(w["pairs"][0], actor.annotator_id, actor=actor),
    "skip and next": lambda s, w, actor: s.skip_and_next(w["pairs"][0], actor.annotator_id, actor=actor),
    "undo": lambda s, w, actor: s.undo_last(actor.annotator_id, actor=actor),
    "history": lambda s, w, actor: s.recent_judgments(actor.annotator_id, actor=actor),
}


def prepare(store, w, name: str) -> None:
    """Give each person something to act on: a lease on pair 0 and a judgment of pair 2 to undo."""
    person = w[name]
    store.hold_pair(person.id, w["pairs"][2])
    store.submit_judgment(Judgment(w["pairs"][2], person.id, "tie"))
    store.hold_pair(person.id, w["pairs"][0])


def _expire(store, session_id: str) -> None:
    with store.transaction("test: expire a session") as con:
        con.execute("UPDATE sessions SET expires_at = ? WHERE id = ?", [utcnow() - timedelta(seconds=1), session_id])


def end(store, w, name: str, how: str) -> None:
    if how == "sign-out":
        store.end_session(w["actors"][name].session_id)
    elif how == "new token":
        store.reset_token(name)
    elif how == "disabled":
        store.set_annotator_disabled(name, True)
    else:
        _expire(store, w["actors"][name].session_id)


@pytest.mark.parametrize("how", ["sign-out", "new token", "disabled", "expired"])
@pytest.mark.parametrize("action", sorted(ADMIN_ACTIONS) + sorted(LABEL_ACTIONS))
def test_an_ended_session_is_refused_at_the_next_action_and_changes_nothing(store, world, action, how):
    name = "root" if action in ADMIN_ACTIONS else "alice"
    run = {**ADMIN_ACTIONS, **LABEL_ACTIONS}[action]
    prepare(store, world, name)
    end(store, world, name, how)
    before = snapshot(store)
    with pytest.raises(SessionEnded, match="disabled" if how == "disabled" else "Sign in again"):
        run(store, world, world["actors"][name])
    assert snapshot(store) == before


@pytest.mark.parametrize("action", sorted(ADMIN_ACTIONS))
def test_admin_actions_need_the_admin_role_as_stored_now(store, world, action):
    run = ADMIN_ACTIONS[action]
    before = snapshot(store)
    with pytest.raises(NotAllowed, match="'alice' is an annotator"):
        run(store, world, world["actors"]["alice"])  # an annotator's live session
    assert snapshot(store) == before

    store.add_annotator("second-admin", "admin")
    store.set_annotator_role("root", "annotator", actor=store.start_session(
        store.get_annotator("second-admin").id)[0])  # lowered while root's session goes on
    before = snapshot(store)
    with pytest.raises(NotAllowed, match="'root' is an annotator"):
        run(store, world, world["actors"]["root"])
    assert snapshot(store) == before


@pytest.mark.parametrize("action", sorted(ADMIN_ACTIONS) + sorted(LABEL_ACTIONS))
def test_live_sessions_may_act(store, world, action):
    name = "root" if action in ADMIN_ACTIONS else "alice"
    prepare(store, world, name)
    if action == "export read":
        assert ADMIN_ACTIONS[action](store, world, world["actors"][name]).num_rows == 1
        return
    {**ADMIN_ACTIONS, **LABEL_ACTIONS}[action](store, world, world["actors"][name])


def test_an_admin_disabled_with_the_annotators_page_open_cannot_act_next(store, world):
    """The issue's case: the admin's page still shows the form, the next action reaches the store and is refused."""
    other, _ = store.add_annotator("other-admin", "admin")
    other_actor, _ = store.start_session(other.id)
    store.set_annotator_disabled("root", True, actor=other_actor)
    with pytest.raises(SessionEnded, match="'root' is disabled"):
        store.add_annotator("sneaky", "admin", actor=world["actors"]["root"])
    assert store.get_annotator("sneaky") is None
    store.set_annotator_disabled("root", False, actor=other_actor)  # enabling again does not revive the session
    with pytest.raises(SessionEnded):
        store.add_annotator("sneaky", "admin", actor=world["actors"]["root"])


def test_actors_act_only_for_themselves(store, world):
    alice = world["actors"]["alice"]
    with pytest.raises(StoreError, match="cannot act for annotator"):
        store.next_pair(world["bob"].id, actor=alice)
    with pytest.raises(StoreError, match="cannot adjudicate in the name of"):
        store.adjudicate(world["pairs"][0], world["root"].id, "a", actor=alice)
    root = world["actors"]["root"]
    with pytest.raises(StoreError, match="cannot disable yourself"):
        store.set_annotator_disabled("root", True, actor=root)
    with pytest.raises(StoreError, match="own admin role"):
        store.set_annotator_role("root", "annotator", actor=root)


def test_sessions_resume_expire_and_end(store, world):
    alice = world["alice"]
    actor, secret = store.start_session(alice.id)
    annotator, resumed = store.resume_session(secret)
    assert (annotator.name, resumed) == ("alice", actor) and actor.session_id != secret
    assert select(store, "SELECT count(*) AS n FROM sessions WHERE id = ?", [secret])[0]["n"] == 0  # only the hash
    assert store.resume_session("made-up") is None and store.resume_session("") is None

    # Use pushes the expiry forward (at most hourly, one write), never past the maximum lifetime.
    start = select(store, "SELECT created_at, expires_at FROM sessions WHERE id = ?", [actor.session_id])[0]
    assert start["expires_at"] - start["created_at"] == SESSION_IDLE
    later = start["created_at"] + timedelta(days=3)
    store.next_pair(alice.id, now=later, actor=actor)
    assert select(store, "SELECT expires_at FROM sessions WHERE id = ?", [actor.session_id])[0]["expires_at"] == \
        later + SESSION_IDLE
    near_end = start["created_at"] + SESSION_MAX - timedelta(days=1)
    with store.transaction("test: keep it alive") as con:
        con.execute("UPDATE sessions SET expires_at = ? WHERE id = ?", [near_end, actor.session_id])
    store.next_pair(alice.id, now=near_end - timedelta(hours=2), actor=actor)
    assert select(store, "SELECT expires_at FROM sessions WHERE id = ?", [actor.session_id])[0]["expires_at"] == \
        start["created_at"] + SESSION_MAX
    with pytest.raises(SessionEnded, match="expired"):
        store.next_pair(alice.id, now=start["created_at"] + SESSION_MAX, actor=actor)

    other_actor, other_secret = store.start_session(alice.id)
    store.end_session(other_actor.session_id)
    assert store.resume_session(other_secret) is None
    assert store.resume_session(store.start_session(alice.id)[1]) is not None  # her other sessions go on

    with pytest.raises(SessionEnded, match="cannot sign in"):
        store.start_session(store.ensure_annotator("sim:x", "simulated").id)
    store.set_annotator_disabled("alice", True)
    with pytest.raises(SessionEnded):
        store.start_session(alice.id)


def test_a_new_token_ends_sessions_started_with_the_old_one(store, world):
    alice = world["alice"]
    _, secret = store.start_session(alice.id)
    new_token = store.reset_token("alice")
    assert store.resume_session(secret) is None
    assert store.authenticate(world["tokens"]["alice"]) is None and store.authenticate(new_token).name == "alice"
    assert select(store, "SELECT count(*) AS n FROM sessions WHERE annotator_id = ?", [alice.id])[0]["n"] == 0


def test_disabling_releases_the_pair_held(store, world):
    alice = world["alice"]
    served = store.next_pair(alice.id, latest=True)
    store.set_annotator_disabled("alice", True)
    assert store.next_pair(world["bob"].id, latest=True)["id"] == served["id"]  # back in the pool at once


# --- the cookie routes (labeler/routes.py), as an ASGI app in process -------------------------------------------------
@pytest.fixture
def post(db_path, monkeypatch):
    """post(path, body, cookies) -> the routes' httpx.Response, served over https (so the cookie is Secure)."""
    import asyncio

    import httpx
    from starlette.applications import Starlette

    from labeler.routes import ROUTES

    monkeypatch.setenv("PREFLOOP_DB", str(db_path))
    app = Starlette(routes=ROUTES)

    def send(path: str, body: str, cookies: dict | None = None) -> httpx.Response:
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://prefloop.test",
                                         cookies=cookies) as client:
                return await client.post(path, content=body)

        return asyncio.run(go())

    return send


def test_a_grant_buys_the_cookie_once(store, post, monkeypatch):
    from labeler import routes

    alice, _ = store.add_annotator("alice")
    actor, secret = store.start_session(alice.id)
    grant = routes.grants.issue(secret)
    reply = post("/prefloop/session", grant)
    assert reply.status_code == 200
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{routes.COOKIE}={secret};")
    for flag in ("HttpOnly", "SameSite=strict", "Secure", "Path=/", f"Max-Age={int(SESSION_MAX.total_seconds())}"):
        assert flag in cookie
    assert post("/prefloop/session", grant).status_code == 403  # used up
    late = routes.grants.issue(secret)
    monkeypatch.setitem(routes.grants.pending, late, (secret, time.monotonic() - 1))  # issued GRANT_SECONDS ago
    assert post("/prefloop/session", late).status_code == 403  # expired

    mine = {routes.COOKIE: secret}
    assert post("/prefloop/session/end", "another-session", mine).json() == {"ok": False}
    assert store.resume_session(secret) is not None  # a stale tab's sign-out leaves this session alone
    reply = post("/prefloop/session/end", actor.session_id, mine)
    assert reply.json() == {"ok": True} and store.resume_session(secret) is None
    assert f'{routes.COOKIE}=""' in reply.headers["set-cookie"] and "Max-Age=0" in reply.headers["set-cookie"]
