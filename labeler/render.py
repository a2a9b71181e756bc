"""Showing untrusted text (prompts, model responses) and the left/right order of a pair.

Text goes to `st.markdown` without `unsafe_allow_html` (Streamlit then shows raw HTML as text and turns `javascript:`
and `vbscript:` URLs into `#`) or to `st.code`; never to `st.html`. Streamlit still renders markdown images (the
browser would fetch any URL a model wrote) and links to other schemes (`data:`, `file:`), so `inert_markdown` first
breaks all markdown link and image syntax: annotators see where a link points instead of following it.
"""

from __future__ import annotations

import hashlib
import re

import streamlit as st

# On-screen choices: the left response is "A", the right one "B", whichever stored response each one is.
SCREEN_CHOICES = ("A", "B", "tie", "both_bad")
# Stored choices, in lower case so "a" is not mistaken for the on-screen "A" (admins see the stored order).
CHOICE_LABELS = {"a": "a better", "b": "b better", "tie": "tie", "both_bad": "both bad"}
_AVATARS = {"user": ":material/person:", "assistant": ":material/smart_toy:", "system": ":material/settings:"}


def shown_left(pair_id: int, annotator_id: int) -> str:
    """Which stored response ('a' or 'b') this annotator sees on the left.

    A hash rather than a coin flip: a reload or a second tab shows the same order, and over many pairs and annotators
    each stored response is on the left half of the time, so position bias averages out of the labels.
    """
    digest = hashlib.sha256(f"prefloop-order:{pair_id}:{annotator_id}".encode()).digest()
    return "a" if digest[0] % 2 == 0 else "b"


def stored_choice(screen_choice: str, left: str) -> str:
    """The stored choice for a choice made on screen, given which stored response was on the left."""
    if screen_choice not in SCREEN_CHOICES:
        raise ValueError(f"screen choice must be one of {SCREEN_CHOICES}, not {screen_choice!r}")
    if screen_choice == "A":
        return left
    if screen_choice == "B":
        return "b" if left == "a" else "a"
    return screen_choice


def screen_texts(pair: dict, left: str) -> tuple[str, str]:
    """(left text, right text) of a pair for the given order."""
    return (pair["response_a"], pair["response_b"]) if left == "a" else (pair["response_b"], pair["response_a"])


# Where a WORD JOINER (zero width, invisible in prose and in code alike) breaks link syntax: between "]" and "(" (inline
# links and images), between "]" and ":" (reference definitions, so no reference link or image can resolve), and after
# the "<" of an autolink. No markdown link or image survives; bare http(s) URLs are still linked by Streamlit.
_LINK_SYNTAX = re.compile(r"(?<=\])(?=[(:])|(?<=<)(?=[A-Za-z][A-Za-z0-9+.-]{1,31}:)")
_JOINER = "\u2060"


def inert_markdown(text: str) -> str:
    """Markdown that renders like `text` except that links and images show as their source text, target included:
    nothing is fetched, and nothing but a bare http(s) URL can be clicked. Invisible: no character is shown differently.
    """
    return _LINK_SYNTAX.sub(_JOINER, text)


def untrusted_text(text: str, raw: bool = False) -> None:
    """Model or prompt text: markdown with highlighted code blocks, or verbatim when `raw`."""
    if not text.strip():
        st.caption("(empty)")
    elif raw:
        st.code(text, language=None, wrap_lines=True)
    else:
        st.markdown(inert_markdown(text))


def conversation(messages: list[dict], raw: bool = False) -> None:
    """A prompt as a chat: one bubble per turn (system, user, assistant), so multi-turn prompts read naturally."""
    for message in messages:
        role = str(message.get("role", "user"))
        with st.chat_message(role, avatar=_AVATARS.get(role, ":material/chat:")):
            untrusted_text(str(message.get("content", "")), raw)


def responses_side_by_side(left_title: str, left: str, right_title: str, right: str, height: int, raw: bool = False):
    """Two responses in equal columns, each in a scrolling box of the same fixed height."""
    for column, title, text in zip(st.columns(2, gap="medium"), (left_title, right_title), (left, right)):
        with column:
            st.markdown(f"**{title}**")
            with st.container(height=height, border=True):
                untrusted_text(text, raw)

