"""The Label page's workflow: which pair is on screen, and what submit, skip, undo and editing a past judgment do.

Everything is kept in `st.session_state` (one browser tab = one session):

    pair       the pair the annotator holds the lease on (a dict from the store), None when nothing is left to label
    editing    a past judgment being changed from the history ({"pair", "choice", "strength", "rationale",
               "shown_left", "seconds_spent"}); while it is set, its pair is the one on screen
    shown_at   {pair id: time.monotonic() when it was first shown}, for the seconds spent on it
    round_id   the round of the pair on screen (the latest round: the store serves it, and follows a new one)
    progress   `Store.label_progress` for the progress bar and when it was read (see `progress`)
    strength   'slight', 'clear' or None for the pair on screen
    restored   {"pair_id", "choice", "strength"}: what an undo took back, shown with its pair until it is judged again
    notice     what the last action wants the page to say

The actions run as button callbacks, before the page script, so the page renders the next pair in the same run.
Each button belongs to one pair (its key holds the pair id) and its callback carries that id: a press for a pair that
is no longer on screen (a double click, a key held down, a stale second tab) does nothing. The browser lets through
only the first of a burst of presses (`labeler/browser.py`), and a press within `REPEAT_GUARD_SECONDS` of a pair
appearing is ignored here as well, since nobody reads two responses that fast. Submit and lease-next are one store
transaction (`Store.submit_and_next`), as are skip and lease-next; every action carries the session's `Actor`, so the
store refuses it at once when the session has ended.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime

import streamlit as st

from labeler.render import shown_left, stored_choice
from labeler.routes import LEASE_SECONDS
from labeler.session import current_actor, sign_out
from store import Annotator, Judgment, PairReassigned, SessionEnded, Store, StoreError

REPEAT_GUARD_SECONDS = 0.5
PROGRESS_REFRESH_SECONDS = 30  # how old the progress counts may get on a page view
PROGRESS_MAX_AGE_SECONDS = 300  # ... and on a run that carries a submit, skip or undo (which count themselves in)
HISTORY_LENGTH = 10


def current_pair(store: Store, annotator: Annotator) -> dict | None:
    """The pair on screen: the one being edited from the history, else the leased one (leased now if need be)."""
    state = st.session_state
    if "pair" not in state:
        with _signing_out_when_ended():
            _show(_lease_next(store, annotator))
    if state["pair"] is None and state.get("round_id") is None:  # nothing to label: name the round it is about
        latest = store.get_round()
        state["round_id"] = latest["id"] if latest else None
    editing = state.get("editing")
    return editing["pair"] if editing else state["pair"]


def progress(store: Store, annotator: Annotator, since: datetime) -> dict:
    """The progress bar's counts, read from the store when the round or the day changes, after a skip or an undo, and
    when older than PROGRESS_REFRESH_SECONDS (PROGRESS_MAX_AGE_SECONDS on a run that carries an action); in between, a
    submit counts itself in. This keeps the query off the path from a submit to the next pair; other annotators' work
    shows up on the next page view after the refresh time."""
    state = st.session_state
    cached = state.get("progress")
    max_age = PROGRESS_MAX_AGE_SECONDS if state.pop("acted", False) else PROGRESS_REFRESH_SECONDS
    if cached is None or cached["key"] != (state.get("round_id"), since) or \
            time.monotonic() - cached["read_at"] > max_age:
        counts = store.label_progress(annotator.id, state.get("round_id"), since)
        cached = state["progress"] = {**counts, "key": (state.get("round_id"), since), "read_at": time.monotonic()}
    return cached


def _count_submit() -> None:
    cached = st.session_state.get("progress")
    if cached is not None:
        cached["judged_since"] += 1
        cached["done"] = min(cached["done"] + 1, cached["needed"])
        cached["left"] = cached["needed"] - cached["done"]


def _show(pair: dict | None) -> None:
    state = st.session_state
    state["pair"] = pair
    state["strength"] = None
    if pair is not None:
        state["round_id"] = pair["round_id"]
        state.setdefault("shown_at", {}).setdefault(pair["id"], time.monotonic())
    restored = state.get("restored")
    if restored and (pair is None or restored["pair_id"] != pair["id"]):
        del state["restored"]


def _lease_next(store: Store, annotator: Annotator) -> dict | None:
    return store.next_pair(annotator.id, latest=True, lease_seconds=LEASE_SECONDS, actor=current_actor())


@contextmanager
def _signing_out_when_ended():
    """While the page renders: an ended session signs this tab out and shows the sign-in form with the reason."""
    try:
        yield
    except SessionEnded as exc:
        sign_out(str(exc))
        st.rerun()


def _reporting_errors(action):
    """Callbacks cannot show anything themselves: a store refusal becomes a message on the page, and an ended session
    signs this tab out (the page then shows the sign-in form with the reason). An action that returns True went through
    the store, which checked the session in its transaction: the page's periodic recheck starts over, so it stays off
    the runs that carry a submit (see also `progress`)."""

    def wrapped(*args):
        try:
            acted = action(*args)
        except SessionEnded as exc:
            sign_out(str(exc))
        except StoreError as exc:
            st.session_state["notice"] = ("error", str(exc))
        else:
            if acted:
                st.session_state["acted"] = True
                st.session_state["checked_at"] = time.monotonic()

    return wrapped


def screen_choice(choice: str, left: str) -> str:
    """The on-screen choice ("A" is the left response) for a stored choice, given which response was on the left."""
    if choice in ("a", "b"):
        return "A" if choice == left else "B"
    return choice


@_reporting_errors
def submit(store: Store, annotator: Annotator, pair_id: int, choice_on_screen: str) -> bool | None:
    state = st.session_state
    editing = state.get("editing")
    if editing is not None:
        if editing["pair"]["id"] == pair_id:
            return _save_edit(store, annotator, choice_on_screen)
        return None  # else: drawn for the pair the edit replaced on screen
    pair = state.get("pair")
    if pair is None or pair["id"] != pair_id:
        return None  # drawn for a pair that is judged already
    seconds = time.monotonic() - state["shown_at"][pair_id]
    if seconds < REPEAT_GUARD_SECONDS:
        state["notice"] = ("info", "Ignored a second press right after the pair appeared.")
        return None
    judgment = _judgment(annotator, pair_id, choice_on_screen, round(seconds, 2))
    actor = current_actor()
    try:
        _, upcoming = store.submit_and_next(judgment, latest=True, lease_seconds=LEASE_SECONDS, actor=actor)
    except PairReassigned as refused:
        # The lease lapsed (idle, closed tab) or the pair filled up. If the pair still has room, take it again and
        # record the choice; otherwise say so and move on.
        if not store.hold_pair(annotator.id, pair_id, LEASE_SECONDS, actor=actor):
            state["notice"] = ("error", str(refused))
            state["shown_at"].pop(pair_id, None)
            state.pop("progress", None)
            _show(_lease_next(store, annotator))
            return True
        _, upcoming = store.submit_and_next(judgment, latest=True, lease_seconds=LEASE_SECONDS, actor=actor)
    del state["shown_at"][pair_id]
    _count_submit()
    _show(upcoming)
    return True


def _judgment(annotator: Annotator, pair_id: int, choice_on_screen: str, seconds: float | None) -> Judgment:
    state = st.session_state
    left = shown_left(pair_id, annotator.id)
    return Judgment(
        pair_id=pair_id,
        annotator_id=annotator.id,
        choice=stored_choice(choice_on_screen, left),
        strength=state.get("strength") if choice_on_screen in ("A", "B") else None,
        rationale=(state.get(f"rationale-{pair_id}") or "").strip() or None,
        shown_left=left,
        seconds_spent=seconds,
    )


@_reporting_errors
def skip(store: Store, annotator: Annotator, pair_id: int) -> bool | None:
    state = st.session_state
    pair = state.get("pair")
    if state.get("editing") is not None or pair is None or pair["id"] != pair_id:
        return None
    upcoming = store.skip_and_next(pair_id, annotator.id, latest=True, lease_seconds=LEASE_SECONDS,
                                   actor=current_actor())
    state["shown_at"].pop(pair_id, None)
    state.pop("progress", None)
    _show(upcoming)
    return True


@_reporting_errors
def undo(store: Store, annotator: Annotator) -> bool:
    """Take back this annotator's latest judgment or skip and show its pair again as it was: the choice it had is
    named on screen, its strength and rationale filled in (the pair is leased anew and timed from now)."""
    state = st.session_state
    state.pop("editing", None)
    undone = store.undo_last(annotator.id, LEASE_SECONDS, actor=current_actor())
    if undone is None:
        state["notice"] = ("info", "Nothing to undo in the open round.")
        return True
    shown_at = state.setdefault("shown_at", {})
    shown_at.pop(undone["pair_id"], None)
    if state.get("pair") is not None:  # the pair on screen goes back to the pool; time it afresh if it comes back
        shown_at.pop(state["pair"]["id"], None)
    state.pop("progress", None)
    if undone["pair"] is None:
        state["notice"] = ("info", f"Took back your skip of pair {undone['pair_id']}, but others have meanwhile given "
                                   "it all the judgments it needs.")
        return True
    pair_id = undone["pair_id"]
    _show(undone["pair"])
    if undone["undone"] == "skip":
        state["notice"] = ("info", "Took back your skip; here is that pair again.")
        return True
    state["strength"] = undone["strength"]
    state[f"rationale-{pair_id}"] = undone["rationale"] or ""
    left = undone["shown_left"] or shown_left(pair_id, annotator.id)
    state["restored"] = {"pair_id": pair_id, "choice": screen_choice(undone["choice"], left),
                         "strength": undone["strength"]}
    state["notice"] = ("info", "Took back your last judgment; here is that pair again as you left it.")
    return True


def recent_judgments(store: Store, annotator: Annotator) -> list[dict]:
    """The history panel's rows: the annotator's last judgments with their choice in on-screen terms."""
    with _signing_out_when_ended():
        rows = store.recent_judgments(annotator.id, HISTORY_LENGTH, actor=current_actor())
    for row in rows:
        row["screen_choice"] = screen_choice(row["choice"], row["shown_left"] or shown_left(row["pair_id"],
                                                                                            annotator.id))
    return rows


@_reporting_errors
def edit(store: Store, annotator: Annotator, pair_id: int) -> None:
    """Show a past judgment's pair with its choice, strength and rationale, to change it (a re-submit updates it)."""
    state = st.session_state
    found = store.judgments(pair_id=pair_id, annotator_id=annotator.id)
    pair = store.get_pair(pair_id)
    if not found or pair is None:
        state["notice"] = ("error", f"You have no judgment of pair {pair_id} to change.")
        return
    (row,) = found
    left = row["shown_left"] or shown_left(pair_id, annotator.id)
    state["editing"] = {"pair": pair, "choice": row["choice"], "strength": row["strength"],
                        "rationale": row["rationale"], "shown_left": left, "seconds_spent": row["seconds_spent"]}
    state["strength"] = row["strength"]
    state[f"rationale-{pair_id}"] = row["rationale"] or ""
    state["restored"] = {"pair_id": pair_id, "choice": screen_choice(row["choice"], left), "strength": row["strength"]}


def _save_edit(store: Store, annotator: Annotator, choice_on_screen: str) -> bool:
    state = st.session_state
    editing = state["editing"]
    pair_id = editing["pair"]["id"]
    judgment = _judgment(annotator, pair_id, choice_on_screen, editing["seconds_spent"])
    store.submit_judgment(judgment, actor=current_actor())
    state["notice"] = ("info", f"Changed your judgment of pair {pair_id}.")
    _back_to_queue(store, annotator)
    return True


@_reporting_errors
def cancel_edit(store: Store, annotator: Annotator) -> bool:
    _back_to_queue(store, annotator)
    return True


def _back_to_queue(store: Store, annotator: Annotator) -> None:
    """Leave the edit for the leased pair, taking its lease again (it may have lapsed meanwhile)."""
    state = st.session_state
    state.pop("editing", None)
    state.pop("restored", None)
    state["strength"] = None
    pair = state.get("pair")
    if pair is not None and not store.hold_pair(annotator.id, pair["id"], LEASE_SECONDS, actor=current_actor()):
        state["shown_at"].pop(pair["id"], None)
        _show(_lease_next(store, annotator))


def set_strength(value: str) -> None:
    state = st.session_state
    state["strength"] = None if state.get("strength") == value else value


def check_again() -> None:
    """Forget the empty result, so the next run asks the store (and finds a new round) again."""
    for key in ("pair", "round_id", "progress"):
        st.session_state.pop(key, None)
