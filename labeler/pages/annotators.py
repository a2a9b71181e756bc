"""Annotators (admins): create annotators and admins (the sign-in token is shown once), disable or enable them,
issue new tokens, and see each one's counts and pace."""

import streamlit as st

from labeler.app_store import get_store
from labeler.render import plain
from labeler.session import act, local_day_start, require_admin

admin = require_admin()
store = get_store()
state = st.session_state

st.title("Annotators")


def show_token_once() -> None:
    """The token of the account just created or reset; it is popped, so it is gone on the next run."""
    if issued := state.pop("issued_token", None):
        name, token = issued
        st.success(f"Sign-in token for **{plain(name)}**. It is shown this once and stored only as a hash: "
                   "copy it now.")
        st.code(token, language=None)


with st.form("add-annotator", clear_on_submit=True):
    st.markdown("**Add someone**")
    name = st.text_input("Name", placeholder="e.g. alice, or the email they sign in with through single sign-on")
    role = st.selectbox("Role", ["annotator", "admin"], help="Annotators only label; admins reach every page.")
    if st.form_submit_button("Create", type="primary", icon=":material/person_add:"):
        if added := act(store.add_annotator, name, role):
            created, token = added
            state["issued_token"] = (created.name, token)
show_token_once()

stats = store.annotator_stats(since=local_day_start())
people = [s for s in stats if s["role"] in ("annotator", "admin")]
st.subheader("Counts and pace")
st.caption("judged_today: since your local midnight · per_hour: the pace the median seconds per judgment implies")
st.dataframe(stats, hide_index=True, column_order=["name", "role", "disabled", "judgments", "judged_today",
                                                    "last_hour", "skips", "median_seconds", "per_hour",
                                                    "last_judgment_at"])

st.subheader("Manage")
if not people:
    st.stop()
chosen = st.selectbox("Person", [p["name"] for p in people])
person = next(p for p in people if p["name"] == chosen)
with st.container(horizontal=True):
    if person["disabled"]:
        if st.button("Enable", icon=":material/check_circle:") and act(store.set_annotator_disabled, chosen, False):
            st.rerun()
    elif st.button("Disable", icon=":material/block:", disabled=chosen == admin.name,
                   help="You cannot disable yourself." if chosen == admin.name else "Their sessions end at once: "
                   "their next action is refused."):
        if act(store.set_annotator_disabled, chosen, True):
            st.rerun()
    other_role = "annotator" if person["role"] == "admin" else "admin"
    if st.button(f"Make {other_role}", icon=":material/manage_accounts:", disabled=chosen == admin.name,
                 help="You cannot change your own role." if chosen == admin.name else "Takes effect at their next "
                 "action.") and act(store.set_annotator_role, chosen, other_role):
        st.rerun()
    if st.button("Issue a new token", icon=":material/key:", help="The old token and its sessions stop working."):
        if token := act(store.reset_token, chosen):
            state["issued_token"] = (chosen, token)
            st.rerun()
