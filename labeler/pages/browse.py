"""Browse (admins): search and filter every pair and judgment, by round, annotator, choice, agreement and text.

Two views of the same filters: pairs (one row each, with its judgment counts and agreement) and judgments (one row
each, with its rationale). Pick a row to see that pair in full below the table: prompt, both responses (stored
order, a on the left) and every judgment. The queries are `Store.browse_pairs` and `Store.browse_judgments`.
"""

import streamlit as st

from labeler.app_store import get_store
from labeler.render import CHOICE_LABELS, conversation, page_style, prompt_title, responses_side_by_side
from labeler.session import require_admin
from store import AGREEMENTS, BrowseFilter

PAGE_SIZE = 200
ANY = "any"
AGREEMENT_LABELS = {"unjudged": "no judgment", "single": "one judgment", "agree": "judges agree",
                    "disagree": "judges disagree"}
FINAL = {ANY: None, "with a final label": True, "without a final label": False}

require_admin()
store = get_store()
page_style()
st.title("Browse")

status = store.status()
with st.container(horizontal=True, vertical_alignment="bottom"):
    view = st.segmented_control("View", ["Pairs", "Judgments"], default="Pairs", key="browse-view") or "Pairs"
    text = st.text_input("Search", placeholder="words in prompts, responses, rationales or final-label notes",
                         key="browse-text")
with st.container(horizontal=True):
    round_choice = st.selectbox("Round", [ANY] + [r["round"] for r in reversed(status["rounds"])] + ["imported"],
                                key="browse-round")
    annotator = st.selectbox("Annotator", [ANY] + [a["name"] for a in status["annotators"]], key="browse-annotator",
                             help="Pairs view: pairs this annotator judged.")
    choice = st.selectbox("Choice", [ANY, *CHOICE_LABELS], format_func=lambda c: CHOICE_LABELS.get(c, c),
                          key="browse-choice", help="Pairs view: pairs with at least one judgment of this choice.")
    agreement = st.selectbox("Agreement", [ANY, *AGREEMENTS], format_func=lambda a: AGREEMENT_LABELS.get(a, a),
                             key="browse-agreement")
    final = st.selectbox("Final label", list(FINAL), key="browse-final")

filters = BrowseFilter(
    round=None if round_choice == ANY else round_choice,
    annotator=None if annotator == ANY else annotator,
    choice=None if choice == ANY else choice,
    agreement=None if agreement == ANY else agreement,
    adjudicated=FINAL[final],
    text=text.strip() or None,
)
browse = store.browse_pairs if view == "Pairs" else store.browse_judgments
page = st.session_state.get("browse-page", 1)
rows, total = browse(filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
pages = max(1, -(-total // PAGE_SIZE))
if page > pages:  # the filters changed under a later page: back to the first
    page = st.session_state["browse-page"] = 1
    rows, total = browse(filters, limit=PAGE_SIZE)
if pages > 1:
    st.number_input("Page", 1, pages, key="browse-page")
noun = "pair" if view == "Pairs" else "judgment"
if not rows:
    st.info(f"No {noun} matches these filters.")
    st.stop()
first = (page - 1) * PAGE_SIZE + 1
st.caption(f"{total:,} matching {noun}{'' if total == 1 else 's'}"
           + (f"; showing {first:,} to {first + len(rows) - 1:,}" if pages > 1 else "") + ". Pick a row to see it.")
columns = (["pair_id", "round", "status", "judgments", "a", "b", "tie", "both_bad", "agreement", "final_choice",
            "annotators", "prompt", "last_judged_at"] if view == "Pairs" else
           ["pair_id", "round", "annotator", "choice", "strength", "rationale", "seconds_spent", "agreement",
            "final_choice", "prompt", "judged_at"])
picked = st.dataframe(rows, hide_index=True, column_order=columns, on_select="rerun", selection_mode="single-row",
                      key=f"browse-table-{view}")
selected = picked.selection.rows
if not selected:
    st.stop()

pair_id = rows[selected[0]]["pair_id"]
pair = store.pair_review(pair_id)
st.subheader(f"Pair {pair_id}")
st.markdown(prompt_title(pair["messages"]))
conversation(pair["messages"], key=f"browse-prompt-{pair_id}")
responses_side_by_side("Response a", pair["response_a"], "Response b", pair["response_b"], key=f"browse-{pair_id}",
                       tokens=(pair.get("response_a_tokens"), pair.get("response_b_tokens")))
st.markdown("**Judgments** (in stored terms: a is the left response above)")
st.dataframe([{**j, "choice": CHOICE_LABELS[j["choice"]]} for j in pair["judgments"]], hide_index=True)
if final_label := pair["adjudication"]:
    st.markdown("**Final label**")
    st.dataframe([{**final_label, "choice": CHOICE_LABELS[final_label["choice"]]}], hide_index=True)
