"""The Label page's workflow: which pair is on screen, and what submit, skip and undo do.

Everything is kept in `st.session_state` (one browser tab = one session):

    pair       the pair on screen (a dict from the store), None when nothing is left to label
    shown_at   {pair id: time.monotonic() when it was first shown}, for the seconds spent on it
    round_id   the round being labeled: the latest one, looked up again when it runs out
    progress   `Store.label_progress` for the progress bar and when it was read (see `progress`)
    strength   'slight', 'clear' or None for the pair on screen
    notice     what the last action wants the page to say

The actions run as button callbacks, before the page script, so the page renders the next pair in the same run.
Each carries the id of the pair its button was drawn for: a second click that arrives after the pair was judged
(a double click, a key held down) is ignored instead of judging the next pair. A press within `REPEAT_GUARD_SECONDS`
of a pair appearing is ignored for the same reason: nobody reads two responses that fast, but a double click's
second half can land on the freshly drawn buttons of the next pair.
"""

from __future__ import annotations

import time
from datetime import datetime

import streamlit as st

from labeler.render import shown_left, stored_choice
from store import Annotator, Judgment, Store, StoreError

LEASE_SECONDS = 600
REPEAT_GUARD_SECONDS = 0.5
PROGRESS_REFRESH_SECONDS = 30


def current_pair(store: Store, annotator: Annotator) -> dict | None:
    if "pair" not in st.session_state:
        _show(_lease_next(store, annotator))
    return st.session_state["pair"]


def progress(store: Store, annotator: Annotator, since: datetime) -> dict:
    """The progress bar's counts, read from the store at most every PROGRESS_REFRESH_SECONDS (and whenever the
    round or the day changes, or after a skip or an undo); in between, a submit counts itself in. This keeps the
    query off the path from a submit to the next pair; other annotators' work shows up within the refresh time."""
    state = st.session_state
    cached = state.get("progress")
    if cached is None or cached["key"] != (state.get("round_id"), since) or \
            time.monotonic() - cached["read_at"] > PROGRESS_REFRESH_SECONDS:
        counts = store.label_progress(annotator.id, state.get("round_id"), since)
        cached = state["progress"] = {**counts, "key": (state.get("round_id"), since), "read_at": time.monotonic()}
    return cached


def _count_submit() -> None:
    cached = st.session_state.get("progress")
    if cached is not None:
        cached["judged_since"] += 1
        cached["done"] = min(cached["done"] + 1, cached["needed"])
        cached["left"] = cached["needed"] - cached["done"]


def _latest_round_id(store: Store) -> int | None:
    latest = store.get_round()
    return latest["id"] if latest else None


def _lease_next(store: Store, annotator: Annotator) -> dict | None:
    state = st.session_state
    if "round_id" not in state:
        state["round_id"] = _latest_round_id(store)
    pair = store.next_pair(annotator.id, round_id=state["round_id"], lease_seconds=LEASE_SECONDS)
    if pair is None:  # this round is done for us; a newer round may have started meanwhile
        latest = _latest_round_id(store)
        if latest != state["round_id"]:
            state["round_id"] = latest
            pair = store.next_pair(annotator.id, round_id=latest, lease_seconds=LEASE_SECONDS)
    return pair


def _show(pair: dict | None) -> None:
    state = st.session_state
    state["pair"] = pair
    state["strength"] = None
    shown_at = state.setdefault("shown_at", {})
    if pair is not None:
        shown_at.setdefault(pair["id"], time.monotonic())


def _reporting_errors(action):
    """Callbacks cannot show anything themselves; a store error becomes a message on the page instead."""

    def wrapped(*args):
        try:
            action(*args)
        except StoreError as exc:
            st.session_state["notice"] = ("error", str(exc))

    return wrapped


@_reporting_errors
def submit(store: Store, annotator: Annotator, pair_id: int, screen_choice: str) -> None:
    state = st.session_state
    pair = state.get("pair")
    if pair is None or pair["id"] != pair_id:
        return  # drawn for a pair that is judged already
    seconds = time.monotonic() - state["shown_at"][pair_id]
    if seconds < REPEAT_GUARD_SECONDS:
        state["notice"] = ("info", "Ignored a second press right after the pair appeared.")
        return
    left = shown_left(pair_id, annotator.id)
    rationale = (state.get(f"rationale-{pair_id}") or "").strip() or None
    store.submit_judgment(
        Judgment(
            pair_id=pair_id,
            annotator_id=annotator.id,
            choice=stored_choice(screen_choice, left),
            strength=state.get("strength") if screen_choice in ("A", "B") else None,
            rationale=rationale,
            shown_left=left,
            seconds_spent=round(seconds, 2),
        )
    )
    upcoming = _lease_next(store, annotator)  # if this fails, the pair stays on screen: a resubmit updates the row
    del state["shown_at"][pair_id]
    _count_submit()
    _show(upcoming)


@_reporting_errors
def skip(store: Store, annotator: Annotator, pair_id: int) -> None:
    pair = st.session_state.get("pair")
    if pair is None or pair["id"] != pair_id:
        return
    store.skip_pair(pair_id, annotator.id)
    st.session_state["shown_at"].pop(pair_id, None)
    st.session_state.pop("progress", None)
    _show(_lease_next(store, annotator))


@_reporting_errors
def undo(store: Store, annotator: Annotator) -> None:
    """Take back this annotator's latest judgment and show its pair again (leased anew, timed from now)."""
    state = st.session_state
    pair_id = store.undo_last_judgment(annotator.id)
    if pair_id is None:
        state["notice"] = ("info", "Nothing to undo.")
        return
    shown_at = state.setdefault("shown_at", {})
    shown_at.pop(pair_id, None)
    if state.get("pair") is not None:  # the pair on screen comes back after this one: time it afresh then
        shown_at.pop(state["pair"]["id"], None)
    state.pop("progress", None)
    _show(store.lease_pair(pair_id, annotator.id, LEASE_SECONDS))
    state["notice"] = ("info", "Took back your last judgment; here is that pair again.")


def set_strength(value: str) -> None:
    state = st.session_state
    state["strength"] = None if state.get("strength") == value else value


def check_again() -> None:
    """Forget the empty result, so the next run asks the store (and finds a new round) again."""
    for key in ("pair", "round_id", "progress"):
        st.session_state.pop(key, None)
