"""The few scripts the app runs in the annotator's browser (our own code, never text from the store or a person).

* `cookie_tasks`: after a sign-in, trade the one-time grant for the HttpOnly session cookie; after a sign-out, end the
  session and delete the cookie if it still names that session (`labeler/routes.py` says what protects the cookie).
* `label_page_guard`, installed once per tab on the Label page:
  - Key presses and clicks on the choice bar go through a quiet rule: a press of a choice key (A, B, T, X, S) is let
    through only if no choice key was pressed in the `QUIET_MS` before it; the same for U, 1 and 2, and for clicks on
    the choice, skip and undo buttons. Held keys (auto-repeat) never pass. Twelve presses of B 100 ms apart therefore
    make one press: the first one, for the pair on screen. Each button belongs to one pair (its key and its callback
    carry the pair id) and the server ignores a press for a pair it no longer shows (`labeler/labeling.py`).
  - A heartbeat keeps the lease on the pair on screen while the annotator is active: every `HEARTBEAT_MS` it posts
    the pair id to /prefloop/lease/hold, unless there was no key, pointer or scroll input for `IDLE_MS`. Leases last
    `routes.LEASE_SECONDS` past the last heartbeat, and closing the tab gives the pair back at once (a beacon to
    /prefloop/lease/release), so a closed or abandoned tab no longer holds pairs for long.

Scripts run through `st.html(..., unsafe_allow_javascript=True)` inside a hidden container; an unchanged script is not
run again on a rerun, and the guard installs itself only once per tab.
"""

from __future__ import annotations

import json

import streamlit as st

from labeler.routes import LEASE_SECONDS

QUIET_MS = 400
HEARTBEAT_MS = LEASE_SECONDS * 1000 // 4  # a missed (or throttled, in a background tab) heartbeat ends no lease
IDLE_MS = 300_000

_HIDDEN = "<style>[class*='st-key-prefloop-js'] { display: none; }</style>"

_GUARD_BODY = """
  if (window.__prefloopGuard) return;
  window.__prefloopGuard = true;
  const KEY_GROUPS = {a: "choice", b: "choice", t: "choice", x: "choice", s: "choice", u: "undo", 1: "slight",
                      2: "clear"};
  const CLICK_GROUPS = [[/st-key-(choice|skip)-/, "choice"], [/st-key-undo/, "undo"]];
  const last = {};
  let lastInput = Date.now();
  const typing = el => el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  // A press passes if its group was quiet for QUIET_MS; every press, passed or not, restarts the quiet time.
  const quiet = group => {
    const now = performance.now(), previous = last[group];
    last[group] = now;
    return previous === undefined || now - previous >= QUIET_MS;
  };
  const stop = event => { event.stopImmediatePropagation(); event.preventDefault(); };
  window.addEventListener("keydown", event => {
    lastInput = Date.now();
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const group = KEY_GROUPS[event.key.toLowerCase()];
    if (group && (!quiet(group) || event.repeat)) stop(event);
  }, true);
  window.addEventListener("click", event => {
    const box = event.target.closest && event.target.closest("[class*='st-key-']");
    const found = box && CLICK_GROUPS.find(([pattern]) => pattern.test(box.className));
    if (found && !quiet(found[1])) stop(event);
  }, true);
  for (const type of ["pointerdown", "pointermove", "wheel", "scroll", "touchstart"]) {
    window.addEventListener(type, () => { lastInput = Date.now(); }, {capture: true, passive: true});
  }
  const pairOnScreen = () => {
    for (const el of document.querySelectorAll("[class*='st-key-choice-']")) {
      const found = /st-key-choice-[A-Za-z_]+-(\\d+)/.exec(el.className);
      if (found) return found[1];
    }
    return null;
  };
  setInterval(() => {
    const pair = pairOnScreen();
    if (pair && Date.now() - lastInput < IDLE_MS) {
      fetch("/prefloop/lease/hold", {method: "POST", body: pair, credentials: "same-origin"}).catch(() => {});
    }
  }, HEARTBEAT_MS);
  window.addEventListener("pagehide", () => {
    const pair = pairOnScreen();
    if (pair) navigator.sendBeacon("/prefloop/lease/release", pair);
  });
"""
_GUARD = (f"(() => {{\n  const QUIET_MS = {QUIET_MS}, HEARTBEAT_MS = {HEARTBEAT_MS}, IDLE_MS = {IDLE_MS};"
          f"{_GUARD_BODY}}})();")


def _run(key: str, script: str | None) -> None:
    """A hidden container, rendered on every run whether or not it has a script this time: the elements after it keep
    their places, so Streamlit does not draw them anew (a form drawn anew shows twice for a moment)."""
    st.html(_HIDDEN, width="content")  # style only: Streamlit puts it outside the page's flow
    with st.container(key=f"prefloop-js-{key}"):
        if script:
            st.html(f"<script>{script}</script>", unsafe_allow_javascript=True)


def cookie_tasks(grant: str | None, drop_session: str | None) -> None:
    """After a sign-in, trade the grant for the cookie; after a sign-out, drop the cookie if it holds that session."""
    script = None
    if grant:
        script = (f'fetch("/prefloop/session", {{method: "POST", body: {json.dumps(grant)}, '
                  'credentials: "same-origin", cache: "no-store"}).catch(() => {});')
    elif drop_session:
        script = (f'fetch("/prefloop/session/end", {{method: "POST", body: {json.dumps(drop_session)}, '
                  'credentials: "same-origin", cache: "no-store"}).catch(() => {});')
    _run("cookie", script)


def label_page_guard() -> None:
    _run("guard", _GUARD)
