"""Who is signed in: the store handle, sign-in by token or OIDC, the session cookie, and the guard of admin pages.

Tokens come from `prefloop annotators add NAME --role annotator|admin` or the Annotators page. Single sign-on is
offered when `.streamlit/secrets.toml` (git-ignored) has an [auth] section for `st.login` (needs `pip install
Authlib`); the provider's verified email must be the name of an enabled annotator:

    [auth]
    redirect_uri = "http://localhost:8501/oauth2callback"
    cookie_secret = "a long random string"
    client_id = "..."
    client_secret = "..."
    server_metadata_url = "https://accounts.google.com/.well-known/openid-configuration"

Signing in (either way) starts a server-side session (`Store.start_session`) and gives the browser its HttpOnly cookie
through `labeler/routes.py`, so a reload (F5), a new tab or a typed link (/dashboard) resume the session instead of
asking again. `st.session_state` (one per browser tab) holds the annotator and the `Actor` (annotator id + session id)
that every store action is given: the store checks that session, the account and its role in the same transaction as
the action, so signing out, a new token or disabling the account stop the very next action. Pages recheck the session
every `RECHECK_SECONDS` (admin pages on every run) so that a page with no action going on signs out too.

Wrong tokens are slowed down and then locked out (`labeler/brake.py`).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import streamlit as st

from labeler import browser
from labeler.app_store import get_store
from labeler.brake import SignInBrake, client_of_request
from labeler.render import focus_field, plain
from labeler.routes import COOKIE, grants
from store import Actor, Annotator, SessionEnded, Store, StoreError
from store.sessions import session_id_of
from store.store import utcnow

RECHECK_SECONDS = 60
BRAKE = SignInBrake()


def current_annotator() -> Annotator | None:
    """The signed-in, still enabled annotator of this session, or None (after trying the browser's session cookie)."""
    state = st.session_state
    if "annotator" not in state:
        _resume_from_cookie()
    annotator = state.get("annotator")
    if annotator is None:
        return None
    if time.monotonic() - state.get("checked_at", 0.0) > RECHECK_SECONDS:
        return _recheck()
    return annotator


def current_actor() -> Actor:
    """What this session's store actions are authorized with."""
    return st.session_state["actor"]


def _recheck() -> Annotator | None:
    """The annotator as stored now (its role may have changed), or None after signing out an ended session."""
    state = st.session_state
    try:
        fresh = get_store().check_session(state["actor"])
    except SessionEnded as exc:
        sign_out(str(exc))
        return None
    state["annotator"], state["checked_at"] = fresh, time.monotonic()
    return fresh


def _resume_from_cookie() -> None:
    """Sign in with the session cookie the browser sent, once per tab session (it cannot change without a reload)."""
    state = st.session_state
    secret = st.context.cookies.get(COOKIE)
    if not isinstance(secret, str) or not secret or state.get("cookie_tried") == secret:  # (AppTest has no cookies)
        return
    state["cookie_tried"] = secret
    found = get_store().resume_session(secret)
    if found is None:
        state["forget_cookie"] = session_id_of(secret)  # ended or expired: the browser may drop it
        return
    annotator, actor = found
    _remember(annotator, actor)


def _remember(annotator: Annotator, actor: Actor) -> None:
    state = st.session_state
    state["annotator"], state["actor"], state["checked_at"] = annotator, actor, time.monotonic()


def _sign_in(annotator: Annotator) -> None:
    actor, secret = get_store().start_session(annotator.id)
    tried = st.session_state.get("cookie_tried")
    st.session_state.clear()
    st.session_state["cookie_tried"] = tried  # the stale cookie this tab sent is not tried again
    _remember(annotator, actor)
    st.session_state["cookie_grant"] = grants.issue(secret)


def sign_out(message: str | None = None) -> None:
    """End this session (server-side at once; the page then deletes the cookie) and forget who was signed in."""
    actor = st.session_state.get("actor")
    tried = st.session_state.get("cookie_tried")
    st.session_state.clear()
    st.session_state["cookie_tried"] = tried
    if actor is not None:
        st.session_state["forget_cookie"] = actor.session_id
        try:
            get_store().end_session(actor.session_id)
        except StoreError:
            pass  # the page asks the cookie route to end it as well
    if message:
        st.session_state["sign_in_message"] = message


def act(action, *args, **kwargs):
    """Run a store action as the signed-in person (`actor=` added); returns what it returned (True for None). An ended
    session signs out and reruns; another refusal is shown as an error and returns None."""
    try:
        result = action(*args, actor=current_actor(), **kwargs)
        return True if result is None else result
    except SessionEnded as exc:
        sign_out(str(exc))
        st.rerun()
    except StoreError as exc:
        st.error(plain(str(exc)), icon=":material/block:")
        return None


def require_admin() -> Annotator:
    """First line of every admin page: anyone but a signed-in admin gets a refusal and the page stops here. The session
    and the role are checked with the store on every run, so a lowered role or an ended session shows at once."""
    annotator = current_annotator()
    if annotator is not None:
        annotator = _recheck()
        if annotator is None:
            st.rerun()  # signed out: the sign-in form, with the reason
    if annotator is None or not annotator.is_admin:
        st.error("This page is for admins only. Ask an admin if you need something from it.", icon=":material/block:")
        if annotator is not None:
            st.page_link("labeler/pages/label.py", label="Back to labeling", icon=":material/arrow_back:")
        st.stop()
    return annotator


def local_day_start() -> datetime:
    """Midnight of the browser's day, as naive UTC like every stored time (UTC when the browser did not say)."""
    offset = timedelta(minutes=st.context.timezone_offset or 0)  # minutes behind UTC, as JavaScript gives it
    local_now = utcnow() - offset
    return local_now.replace(hour=0, minute=0, second=0, microsecond=0) + offset


def browser_tasks() -> None:
    """What this run must tell the browser about the cookie: take it (after a sign-in) or drop it (after a sign-out
    or when it named no live session). Dropping names the session meant, so a stale tab signing out cannot end the
    newer session another tab of the same browser signed in with since."""
    state = st.session_state
    browser.cookie_tasks(state.pop("cookie_grant", None), state.pop("forget_cookie", None))


# --- sign-in page -------------------------------------------------------------------------------------------------
def _oidc_config() -> tuple[bool, str | None]:
    """(whether st.secrets has an [auth] section, the provider to name to st.login: None for the only one)."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets file at all: Streamlit raises rather than return nothing
        return False, None
    named = [key for key, value in (auth or {}).items() if hasattr(value, "items")]
    return bool(auth), named[0] if len(named) == 1 else None


def _oidc_sign_in(store: Store, provider: str | None) -> None:
    """Sign in with the identity provider; its verified email must be the name of an enabled annotator."""
    if not st.user.get("is_logged_in", False):
        st.button("Sign in with single sign-on", icon=":material/login:", on_click=st.login,
                  args=(provider,) if provider else ())
        return
    email = st.user.get("email")
    annotator = store.get_annotator(email) if email and st.user.get("email_verified", True) else None
    if annotator is not None and annotator.role in ("annotator", "admin") and not annotator.disabled:
        _sign_in(annotator)
        st.rerun()
    st.error(
        f"{plain(email or 'This account')} signed in with the identity provider, but is not an enabled annotator "
        f"here. An admin can add it with `prefloop annotators add {(email or 'EMAIL').replace('`', '')}`."
    )
    st.button("Sign out of single sign-on", on_click=st.logout)


def sign_in_page() -> None:
    store = get_store()
    st.title("prefloop")
    st.caption("Compare two model responses and say which is better. Sign in to start.")
    if message := st.session_state.pop("sign_in_message", None):
        st.warning(message)
    configured, provider = _oidc_config()
    if configured:
        _oidc_sign_in(store, provider)
        st.divider()
    with st.form("sign-in"):
        token = st.text_input("Sign-in token", type="password", help="The token an admin gave you (shown once when "
                              "your account was created; an admin can issue a new one).")
        submitted = st.form_submit_button("Sign in", type="primary")
    focus_field("Sign-in token")
    if not submitted or not token.strip():
        return
    client = client_of_request()
    if (wait := BRAKE.wait(client)) > 0:
        BRAKE.refused(client)
        st.error(f"Too many wrong tokens. Wait {wait:.0f} s before trying again.", icon=":material/timer:")
        return
    annotator = store.authenticate(token)
    if annotator is not None:
        BRAKE.succeeded(client)
        _sign_in(annotator)
        st.rerun()
    owner = store.annotator_for_token(token)
    if owner is not None and owner.disabled:
        st.error(f"The account '{plain(owner.name)}' is disabled. Ask an admin to enable it.", icon=":material/block:")
        return
    BRAKE.failed(client)
    st.error("That token is not valid. Check it, or ask an admin for a new one.", icon=":material/block:")


def account_sidebar(annotator: Annotator) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{plain(annotator.name)}** ({annotator.role})")
        if st.button("Sign out", icon=":material/logout:"):
            sign_out()
            if st.user.get("is_logged_in", False):
                st.logout()
            st.rerun()
