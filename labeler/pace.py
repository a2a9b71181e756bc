"""The annotator's pace on the Label page: judgments per hour at their recent speed, and the time the round's remaining
judgments would take at it.

The pace is the median seconds spent on the annotator's last PACE_WINDOW judgments (time on screen, so breaks between
pairs do not count), read from the store at most every PACE_REFRESH_SECONDS per session.
"""

from __future__ import annotations

import time

import streamlit as st

from store import Annotator, Store

PACE_WINDOW = 50
PACE_REFRESH_SECONDS = 60


def annotator_pace(store: Store, annotator: Annotator, max_age: float | None = None) -> dict:
    """`Store.annotator_pace` for this annotator, cached in the session: read again when older than `max_age` seconds
    (None: only when there is none yet). The Label page refreshes it after drawing the pair, off the way to it."""
    cached = st.session_state.get("pace")
    if cached is None or (max_age is not None and time.monotonic() - cached["read_at"] > max_age):
        cached = {**store.annotator_pace(annotator.id, PACE_WINDOW), "read_at": time.monotonic()}
        st.session_state["pace"] = cached
    return cached


def pace_text(pace: dict, left: int) -> str | None:
    """"120 per hour · about 25 min for the 50 left at your pace", or None before the first timed judgment."""
    seconds = pace.get("median_seconds")
    if not seconds:
        return None
    per_hour = round(3600 / seconds)
    text = f"your pace {per_hour:,} per hour"
    return text if left <= 0 else f"{text}, about {duration(left * seconds)} for the {left:,} left"


def duration(seconds: float) -> str:
    """A rough, readable length of time: "40 s", "12 min", "3 h 20 min", "2 days 4 h"."""
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"
