"""Review (admins): pairs whose annotators disagree, each with every judgment, and a final label to settle it.

Here responses are shown in their stored order (a on the left) and choices in stored terms; the final label overrides
the annotators' judgments in export.
"""

import streamlit as st

from labeler.render import CHOICE_LABELS, conversation, responses_side_by_side
from labeler.session import act, get_store, require_admin

admin = require_admin()
store = get_store()

st.title("Review")
if message := st.session_state.pop("review_saved", None):
    st.success(message)
show_settled = st.toggle("Include pairs that already have a final label")
rows = store.disagreements(include_adjudicated=show_settled)
if not rows:
    st.info("No disagreements to review. They appear when a pair judged by several annotators (overlap > 1) gets "
            "different choices.")
    st.stop()

st.dataframe(rows, hide_index=True)
pair_id = st.selectbox("Pair to review", [r["pair_id"] for r in rows], format_func=lambda i: f"pair {i}")
pair = store.pair_review(pair_id)

st.markdown("**Prompt**")
conversation(pair["messages"])
responses_side_by_side("Response a", pair["response_a"], "Response b", pair["response_b"], height=360)

st.markdown("**Judgments** (in stored terms: a is the left response above)")
st.dataframe(
    [{**j, "choice": CHOICE_LABELS[j["choice"]]} for j in pair["judgments"]],
    hide_index=True,
)

final = pair["adjudication"]
if final:
    st.info(f"Final label: **{CHOICE_LABELS[final['choice']]}** by {final['admin']} ({final['note'] or 'no note'})")
with st.form(f"adjudicate-{pair_id}"):
    choice = st.radio("Final label", list(CHOICE_LABELS), horizontal=True,
                      format_func=CHOICE_LABELS.get,
                      index=list(CHOICE_LABELS).index(final["choice"]) if final else None)
    note = st.text_input("Note (optional)", value=(final or {}).get("note") or "")
    if st.form_submit_button("Save final label", type="primary"):
        if choice is None:
            st.error("Pick a final label first.")
        elif act(store.adjudicate, pair_id, admin.id, choice, note.strip() or None):
            st.session_state["review_saved"] = f"Pair {pair_id}: final label {CHOICE_LABELS[choice]!r} saved."
            st.rerun()
