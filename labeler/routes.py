"""The HTTP routes served beside the Streamlit app: the sign-in cookie and the lease heartbeat.

`streamlit run streamlit_app.py` finds the `st.App` in streamlit_app.py and serves these routes next to the app. The
Streamlit script talks to the browser over a websocket and cannot set cookies; these routes can:

    POST /prefloop/session          body: a one-time grant -> Set-Cookie: prefloop_session=<secret>
    POST /prefloop/session/end      ends the cookie's session and deletes the cookie
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

from store import NotAuthorized, StoreError

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


def _store():
    from labeler.session import open_store  # the script's module: one Store per database path, shared

    return open_store()


async def _body(request: Request, limit: int = 200) -> str:
    body = await request.body()
    return body[:limit].decode("ascii", errors="replace").strip()


async def set_cookie(request: Request) -> Response:
    secret = grants.redeem(await _body(request))
    if secret is None:
        return JSONResponse({"error": "unknown or expired grant"}, status_code=403)
    response = JSONResponse({"ok": True})
    response.set_cookie(COOKIE, secret, max_age=int(_session_max_age()), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def end_session(request: Request) -> Response:
    secret = request.cookies.get(COOKIE)
    if secret:
        from store.sessions import session_id_of

        await run_in_threadpool(_store().end_session, session_id_of(secret))
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def _with_lease(request: Request, action) -> Response:
    """Answer `action(store, annotator_id, pair_id, actor)` (a dict) for the cookie's live session; 403 without one."""
    secret, pair = request.cookies.get(COOKIE), await _body(request, 20)
    if not secret or not pair.isdigit():
        return JSONResponse({"error": "no session or no pair id"}, status_code=403)

    def run():
        store = _store()
        found = store.resume_session(secret)
        if found is None:
            return None
        annotator, actor = found
        return action(store, annotator.id, int(pair), actor)

    try:
        result = await run_in_threadpool(run)
    except (NotAuthorized, StoreError) as exc:
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


def _session_max_age() -> float:
    from store.sessions import SESSION_MAX

    return SESSION_MAX.total_seconds()


ROUTES = [
    Route("/prefloop/session", set_cookie, methods=["POST"]),
    Route("/prefloop/session/end", end_session, methods=["POST"]),
    Route("/prefloop/lease/hold", hold_lease, methods=["POST"]),
    Route("/prefloop/lease/release", release_lease, methods=["POST"]),
]
