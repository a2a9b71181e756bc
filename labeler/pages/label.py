"""Label: the prompt, two responses side by side, and one button (with its key) per choice.

Choices are made about what is on screen ("A" is the left response) and stored in terms of the pair's stored a/b;
the order on screen is recorded with each judgment. The workflow is in `labeler/labeling.py`; how texts are shown,
and the layout CSS (the choice bar sticks to the bottom of the window), in `labeler/render.py`; the browser side
(quiet rule for key bursts, lease heartbeat) in `labeler/browser.py`. Below the pair: the annotator's recent
judgments, each editable while its round is open.
"""

import streamlit as st

from labeler import browser, labeling
from labeler.app_store import get_store
from labeler.guidelines import guidelines_panel
from labeler.pace import PACE_REFRESH_SECONDS, annotator_pace, pace_text
from labeler.render import (
    conversation,
    page_style,
    prompt_title,
    responses_side_by_side,
    screen_texts,
    screen_tokens,
    shown_left,
    tab_from_the_top,
    view_controls,
)
from labeler.session import current_annotator, local_day_start

SCREEN_LABELS = {"A": "A better", "B": "B better", "tie": "Tie", "both_bad": "Both bad"}

store = get_store()
annotator = current_annotator()
state = st.session_state
page_style()

browser.label_page_guard()
progress_slot = st.empty()  # filled last, so the pair is on screen before the progress query runs
pair = labeling.current_pair(store, annotator)
if notice := state.pop("notice", None):
    kind, message = notice
    (st.error if kind == "error" else st.toast)(message)
# The choice bar is drawn first, so Tab reaches the rationale box at once, and shown at the bottom of the window
# (render.py's CSS), so its buttons stay visible whatever the length of the texts.
bar = st.container(key="choice-bar")
# Open on an annotator's first visit (no judgment when the session began); then as the annotator leaves it.
guidelines_panel(store, annotator, expanded=annotator_pace(store, annotator)["judgments"] == 0)

if pair is None:
    round_id = state.get("round_id")
    st.success(f"Nothing left for you to label{'' if round_id is None else f' in round {round_id}'}. Thank you!")
    with bar.container(horizontal=True):
        st.button("Check again", icon=":material/refresh:", on_click=labeling.check_again)
        st.button("Undo last", key="undo", icon=":material/undo:", shortcut="U", on_click=labeling.undo,
                  args=(store, annotator))
else:
    pair_id = pair["id"]
    if editing := state.get("editing"):
        with st.container(horizontal=True, vertical_alignment="center"):
            st.info(f"Changing your judgment of pair {pair_id}: press a choice to save it.", icon=":material/edit:")
            st.button("Back to labeling", key=f"cancel-edit-{pair_id}", icon=":material/close:",
                      on_click=labeling.cancel_edit, args=(store, annotator))
    if (restored := state.get("restored")) and restored["pair_id"] == pair_id:
        strength = f" ({restored['strength']})" if restored["strength"] else ""
        st.caption(f"{'You chose' if editing else 'Before the undo you chose'} "
                   f"**{SCREEN_LABELS[restored['choice']]}**{strength} for this pair.")
    left = shown_left(pair_id, annotator.id)
    left_text, right_text = screen_texts(pair, left)
    bar.text_input("Rationale (optional)", key=f"rationale-{pair_id}", label_visibility="collapsed",
                   placeholder="Rationale (optional): why? One line is plenty.")
    tab_from_the_top(pair_id)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown(prompt_title(pair["messages"]), width="content")
        st.space("stretch")
        raw, expanded = view_controls()
    conversation(pair["messages"], raw, key=f"prompt-{pair_id}", expanded=expanded)
    responses_side_by_side("Response A", left_text, "Response B", right_text, raw, key=f"pair-{pair_id}",
                           expanded=expanded, tokens=screen_tokens(pair, left))

    strength = state.get("strength")
    with bar.container(horizontal=True, vertical_alignment="center"):
        for label, choice, key in (("A better", "A", "A"), ("B better", "B", "B"), ("Tie", "tie", "T"),
                                   ("Both bad", "both_bad", "X")):
            st.button(label, key=f"choice-{choice}-{pair_id}", shortcut=key,
                      type="primary" if choice in ("A", "B") else "secondary",
                      on_click=labeling.submit, args=(store, annotator, pair_id, choice))
        st.space("small")
        for label, value, key in (("Slight", "slight", "1"), ("Clear", "clear", "2")):
            st.button(label, key=f"strength-{value}-{pair_id}", shortcut=key, on_click=labeling.set_strength,
                      args=(value,), type="primary" if strength == value else "secondary",
                      icon=":material/check:" if strength == value else None,
                      help=f"Optional: A or B is {value}ly better. Press again to clear.")
        st.space("stretch")
        st.button("Skip", key=f"skip-{pair_id}", shortcut="S", icon=":material/skip_next:",
                  on_click=labeling.skip, args=(store, annotator, pair_id))
        st.button("Undo last", key="undo", shortcut="U", icon=":material/undo:",
                  on_click=labeling.undo, args=(store, annotator))
    st.caption(f"Pair {pair_id}")

with st.expander("Your recent judgments", key="history", icon=":material/history:", on_change="rerun") as history:
    if history.open:
        rows = labeling.recent_judgments(store, annotator)
        if not rows:
            st.caption("None yet.")
        for row in rows:
            strength = f" ({row['strength']})" if row["strength"] else ""
            with st.container(horizontal=True, vertical_alignment="center"):
                st.button("Change", key=f"edit-{row['pair_id']}", icon=":material/edit:", disabled=not row["editable"],
                          on_click=labeling.edit, args=(store, annotator, row["pair_id"]),
                          help=None if row["editable"] else "Its round is closed.")
                st.text(f"Pair {row['pair_id']} · {SCREEN_LABELS[row['screen_choice']]}{strength} · "
                        f"{row['prompt'][:80]}" + (f" · “{row['rationale']}”" if row["rationale"] else ""))

counts = labeling.progress(store, annotator, local_day_start())
pace = annotator_pace(store, annotator, max_age=PACE_REFRESH_SECONDS)
round_text = "all rounds" if state.get("round_id") is None else f"round {state['round_id']}"
remaining = f"{counts['left']} judgment{'' if counts['left'] == 1 else 's'} left in {round_text}"
progress_slot.progress(
    counts["done"] / counts["needed"] if counts["needed"] else 1.0,
    text=" · ".join(filter(None, (f"You judged {counts['judged_since']} today", f"{remaining} ({counts['done']} of "
                                  f"{counts['needed']} done)", pace_text(pace, counts["left"])))),
)
