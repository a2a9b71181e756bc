"""Who is signed in: the store handle, sign-in by token or OIDC, and the guard every admin page calls first.

Tokens come from `prefloop annotators add NAME --role annotator|admin` or the Annotators page. Single sign-on is
offered when `.streamlit/secrets.toml` (git-ignored) has an [auth] section for `st.login` (needs `pip install
Authlib`); the provider's verified email must be the name of an enabled annotator:

    [auth]
    redirect_uri = "http://localhost:8501/oauth2callback"
    cookie_secret = "a long random string"
    client_id = "..."
    client_secret = "..."
    server_metadata_url = "https://accounts.google.com/.well-known/openid-configuration"

The signed-in annotator lives in `st.session_state["annotator"]` (one browser tab = one session). It is checked
against the store again every `RECHECK_SECONDS`, so disabling someone ends their sessions within that time; the store
also refuses judgments from a disabled annotator outright.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import streamlit as st

from labeler.render import focus_field, plain
from store import Annotator, Store
from store.store import utcnow

DEFAULT_DB = "data/prefloop.duckdb"
RECHECK_SECONDS = 60


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> Store:
    return Store(path)  # holds no connection: one Store serves every session


def get_store() -> Store:
    return _open_store(os.environ.get("PREFLOOP_DB") or DEFAULT_DB)


def current_annotator() -> Annotator | None:
    """The signed-in, still enabled annotator of this session, or None."""
    state = st.session_state
    annotator = state.get("annotator")
    if annotator is None:
        return None
    if time.monotonic() - state.get("checked_at", 0.0) > RECHECK_SECONDS:
        fresh = get_store().get_annotator(annotator.name)
        if fresh is None or fresh.disabled or fresh.role != annotator.role:
            sign_out("Your account was disabled or changed; sign in again.")
            return None
        state["checked_at"] = time.monotonic()
    return annotator


def _sign_in(annotator: Annotator) -> None:
    st.session_state.clear()
    st.session_state["annotator"] = annotator
    st.session_state["checked_at"] = time.monotonic()


def sign_out(message: str | None = None) -> None:
    st.session_state.clear()
    if message:
        st.session_state["sign_in_message"] = message


def require_admin() -> Annotator:
    """First line of every admin page: anyone but a signed-in admin gets a refusal and the page stops here."""
    annotator = current_annotator()
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
    if not submitted:
        return
    annotator = store.authenticate(token) if token.strip() else None
    if annotator is not None:
        _sign_in(annotator)
        st.rerun()
    owner = store.annotator_for_token(token) if token.strip() else None
    if owner is not None and owner.disabled:
        st.error(f"The account '{plain(owner.name)}' is disabled. Ask an admin to enable it.", icon=":material/block:")
    else:
        st.error("That token is not valid. Check it, or ask an admin for a new one.", icon=":material/block:")


def account_sidebar(annotator: Annotator) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{plain(annotator.name)}** ({annotator.role})")
        if st.button("Sign out", icon=":material/logout:"):
            sign_out()
            if st.user.get("is_logged_in", False):
                st.logout()
            st.rerun()
