"""Review (admins): pairs with every judgment on them, and a final label to settle them.

The list shows disagreements first (pairs judged by several annotators with different choices); "Show" lists pairs
that agree, pairs with a single judgment (all of them at overlap 1) or every judged pair. Here responses are shown in
their stored order (a on the left) and choices in stored terms; the final label overrides the annotators' judgments
in export. Searching and filtering every pair and judgment is on the Browse page.
"""

import streamlit as st

from labeler.app_store import get_store
from labeler.render import CHOICE_LABELS, conversation, page_style, plain, prompt_title, responses_side_by_side
from labeler.session import act, require_admin
from store import BrowseFilter

LISTED = 500  # pairs listed at most; the newest judged first
SHOW = {  # what "Show" offers: the agreement filter each one sets
    "Disagreements": "disagree",
    "Agreements": "agree",
    "Single judgment": "single",
    "All judged": None,
}
EMPTY = {
    "Disagreements": "No disagreements to review. They appear when a pair judged by several annotators (overlap > 1) "
                     "gets different choices.",
    "Agreements": "No pair has several judgments that agree yet.",
    "Single judgment": "No pair has exactly one judgment.",
    "All judged": "No pair has a judgment yet.",
}

admin = require_admin()
store = get_store()
page_style()

st.title("Review")
if message := st.session_state.pop("review_saved", None):
    st.success(message)
with st.container(horizontal=True, vertical_alignment="bottom"):
    show = st.segmented_control("Show", list(SHOW), default="Disagreements", key="review-show") or "Disagreements"
    show_settled = st.toggle("Include pairs that already have a final label")
rows, total = store.browse_pairs(
    BrowseFilter(agreement=SHOW[show], adjudicated=None if show_settled else False, judged=True), limit=LISTED)
if not rows:
    st.info(EMPTY[show])
    st.stop()

if total > LISTED:
    st.caption(f"The {LISTED} most recently judged of {total:,} pairs; the Browse page searches all of them.")
st.dataframe(rows, hide_index=True, column_order=["pair_id", "round", "judgments", "a", "b", "tie", "both_bad",
                                                  "final_choice", "annotators", "prompt", "last_judged_at"])
pair_id = st.selectbox("Pair to review", [r["pair_id"] for r in rows], format_func=lambda i: f"pair {i}")
pair = store.pair_review(pair_id)

st.markdown(prompt_title(pair["messages"]))
conversation(pair["messages"], key=f"review-prompt-{pair_id}")
responses_side_by_side("Response a", pair["response_a"], "Response b", pair["response_b"], key=f"review-{pair_id}",
                       tokens=(pair.get("response_a_tokens"), pair.get("response_b_tokens")))

st.markdown("**Judgments** (in stored terms: a is the left response above)")
st.dataframe(
    [{**j, "choice": CHOICE_LABELS[j["choice"]]} for j in pair["judgments"]],
    hide_index=True,
)

final = pair["adjudication"]
if final:
    note = plain(final["note"]) if final["note"] else "no note"
    st.info(f"Final label: **{CHOICE_LABELS[final['choice']]}** by {plain(final['admin'] or 'a removed admin')} "
            f"({note})")
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
