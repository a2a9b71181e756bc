"""Dashboard (admins): counts and labeling progress at a glance.

The page is a list of sections; each is a function taking the store. Add a section (e.g. the evaluation issue's
accuracy plots) by writing a function and appending it to SECTIONS.
"""

import pandas as pd
import streamlit as st

from labeler.app_store import get_store
from labeler.eval_charts import render_eval_section
from labeler.render import CHOICE_LABELS
from labeler.session import local_day_start, require_admin
from store import Store


def counts(store: Store) -> None:
    status = store.status()
    people = store.annotator_stats(since=local_day_start())
    with st.container(horizontal=True):
        st.metric("Prompts", sum(status["prompts"].values()), border=True)
        st.metric("Rounds", len(status["rounds"]), border=True)
        st.metric("Judgments", sum(p["judgments"] for p in people if p["role"] != "import"), border=True)
        st.metric("Judged today", sum(p["judged_today"] for p in people), border=True)
        st.metric("Active annotators today", sum(1 for p in people if p["judged_today"]), border=True)


def round_progress(store: Store) -> None:
    st.subheader("Rounds")
    rounds = {r["round"]: r for r in store.status()["rounds"]}
    if not rounds:
        st.info("No round yet.")
        return
    progress = {p["round"]: p for p in store.round_progress()}
    for number in sorted(rounds, reverse=True):
        r, p = rounds[number], progress.get(number, {"needed": 0, "done": 0})
        st.progress(p["done"] / p["needed"] if p["needed"] else 0.0,
                    text=f"Round {number} ({r['checkpoint_kind']} checkpoint): {p['done']} of {p['needed']} "
                    f"judgments · {r['pairs']} pairs, {r['complete']} complete, {r['agreement_pending']} awaiting "
                    "more judges")


def activity(store: Store) -> None:
    st.subheader("Activity")
    left, right = st.columns(2)
    with left:
        st.caption("Judgments per day (UTC), last 14 days")
        per_day = store.judgments_per_day(14)
        if per_day:
            st.bar_chart(pd.DataFrame(per_day).set_index("day"))
        else:
            st.caption("none yet")
    with right:
        st.caption("Choices made (people and simulated judges)")
        choices = store.choice_counts()
        if choices:
            st.bar_chart(pd.Series({CHOICE_LABELS[c]: n for c, n in choices.items()}, name="judgments"))
        else:
            st.caption("none yet")


SECTIONS = [counts, round_progress, activity, render_eval_section]

require_admin()
st.title("Dashboard")
for section in SECTIONS:
    section(get_store())
