"""The HTTP routes served beside the Streamlit app: the sign-in cookie and the lease heartbeat.

`streamlit run streamlit_app.py` finds the `st.App` in streamlit_app.py and serves these routes next to the app. The
Streamlit script talks to the browser over a websocket and cannot set cookies; these routes can:

    POST /prefloop/session          body: a one-time grant -> Set-Cookie: prefloop_session=<secret>
    POST /prefloop/session/end      body: a session id -> ends it and deletes the cookie, if the cookie holds it
    POST /prefloop/lease/hold       body: pair id -> keeps the signed-in annotator's lease on it (the heartbeat)
    POST /prefloop/lease/release    body: pair id -> gives the lease on it back (sent when the tab closes)

What protects the session cookie: its value is 32 random bytes, stored server-side only as a sha256 with an expiry
(`store/sessions.py`), so a copy of the database signs nobody in; it is HttpOnly (page scripts cannot read it, so
neither can injected text), SameSite=Strict (no other site's page can make the browser send it, which is also what
keeps these POST routes safe from cross-site requests), Secure when the app is served over https, and scoped to
Path=/. The secret never appears in a URL or in the page: after a sign-in the script hands the browser a one-time grant
(random, valid `GRANT_SECONDS`, kept in this process) and the browser trades it here for the cookie. Signing out,
issuing a new token and disabling the account delete the session server-side, so a stolen cookie stops working too.
"""

from __future__ import annotations

import secrets
import threading
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labeler.app_store import get_store
from store import Actor, StoreError
from store.sessions import SESSION_MAX, session_id_of

COOKIE = "prefloop_session"
GRANT_SECONDS = 60
LEASE_SECONDS = 120  # a pair's lease lasts this long past the last heartbeat (the page sends one every 30 s)


class _Grants:
    """One-time grants: grant -> (session secret, expiry). Kept in the server process, like Streamlit's sessions."""

    def __init__(self):
        self.mutex = threading.Lock()
        self.pending: dict[str, tuple[str, float]] = {}

    def issue(self, secret: str) -> str:
        grant = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self.mutex:
            self.pending = {g: v for g, v in self.pending.items() if v[1] > now}
            self.pending[grant] = (secret, now + GRANT_SECONDS)
        return grant

    def redeem(self, grant: str) -> str | None:
        with self.mutex:
            secret, expires = self.pending.pop(grant, (None, 0.0))
        return secret if expires > time.monotonic() else None


grants = _Grants()


async def _body(request: Request, limit: int = 200) -> str:
    body = await request.body()
    return body[:limit].decode("ascii", errors="replace").strip()


async def set_cookie(request: Request) -> Response:
    secret = grants.redeem(await _body(request))
    if secret is None:
        return JSONResponse({"error": "unknown or expired grant"}, status_code=403)
    response = JSONResponse({"ok": True})
    response.set_cookie(COOKIE, secret, max_age=int(SESSION_MAX.total_seconds()), path="/", httponly=True,
                        samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def end_session(request: Request) -> Response:
    """End the cookie's session and delete the cookie, if it is the session the body names (a tab signing out of an
    older session leaves a newer one, signed in from another tab of the same browser, alone)."""
    secret, meant = request.cookies.get(COOKIE), await _body(request, 100)
    if not secret or session_id_of(secret) != meant:
        return JSONResponse({"ok": False})
    await run_in_threadpool(get_store().end_session, meant)
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


_annotator_of_session: dict[str, int] = {}  # session id -> annotator id: fixed for a session's life, so kept


async def _with_lease(request: Request, action) -> Response:
    """Answer `action(store, annotator_id, pair_id, actor)` (a dict) for the cookie's live session; 403 without one.

    The action checks the session in its own transaction (its `actor`), so remembering which annotator a session
    belongs to saves a transaction per heartbeat without letting an ended session through."""
    secret, pair = request.cookies.get(COOKIE), await _body(request, 20)
    if not secret or not pair.isdigit():
        return JSONResponse({"error": "no session or no pair id"}, status_code=403)

    def run():
        store, session_id = get_store(), session_id_of(secret)
        if session_id not in _annotator_of_session:
            found = store.resume_session(secret)
            if found is None:
                return None
            if len(_annotator_of_session) > 10_000:
                _annotator_of_session.clear()
            _annotator_of_session[session_id] = found[1].annotator_id
        annotator_id = _annotator_of_session[session_id]
        return action(store, annotator_id, int(pair), Actor(annotator_id, session_id))

    try:
        result = await run_in_threadpool(run)
    except StoreError as exc:  # NotAuthorized included: the session ended
        return JSONResponse({"error": str(exc)}, status_code=403)
    if result is None:
        return JSONResponse({"error": "no live session"}, status_code=403)
    return JSONResponse(result)


async def hold_lease(request: Request) -> Response:
    return await _with_lease(request, lambda store, annotator_id, pair_id, actor: {
        "held": store.hold_pair(annotator_id, pair_id, LEASE_SECONDS, actor=actor)})


async def release_lease(request: Request) -> Response:
    return await _with_lease(request, lambda store, annotator_id, pair_id, actor: {
        "released": store.release_lease(annotator_id, pair_id, actor=actor)})


ROUTES = [
    Route("/prefloop/session", set_cookie, methods=["POST"]),
    Route("/prefloop/session/end", end_session, methods=["POST"]),
    Route("/prefloop/lease/hold", hold_lease, methods=["POST"]),
    Route("/prefloop/lease/release", release_lease, methods=["POST"]),
]
