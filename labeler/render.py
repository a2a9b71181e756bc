"""Showing untrusted text (prompts, model responses, anything a person typed) and the left/right order of a pair.

Text goes to `st.markdown` without `unsafe_allow_html` (Streamlit then shows raw HTML as text and turns `javascript:`
and `vbscript:` URLs into `#`) or to `st.code`; never to `st.html`. Streamlit still renders markdown images (the
browser would fetch any URL a model wrote) and links to other schemes (`data:`, `file:`), so `inert_markdown` first
breaks all markdown link and image syntax: annotators see where a link points instead of following it.

Model text is shown as the model wrote it (`labeler/faithful.py`: line breaks, indentation, no math or shortcodes) and
at a bounded cost: at most RENDER_LIMIT characters of a text are rendered as markdown, RAW_LIMIT shown raw, and the
rest on request ("Show all"). Short texts a person typed and the app embeds in its own messages (names, file names,
notes) go through `plain`. `page_style` adds the CSS all this relies on; the Label page's layout CSS is here too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

import streamlit as st

from labeler.faithful import RENDER_LIMIT, WORD_JOINER, cut, faithful_markdown, neutral_colons

# On-screen choices: the left response is "A", the right one "B", whichever stored response each one is.
SCREEN_CHOICES = ("A", "B", "tie", "both_bad")
# Stored choices, in lower case so "a" is not mistaken for the on-screen "A" (admins see the stored order).
CHOICE_LABELS = {"a": "a better", "b": "b better", "tie": "tie", "both_bad": "both bad"}
_AVATARS = {"user": ":material/person:", "assistant": ":material/smart_toy:", "system": ":material/settings:"}
RAW_LIMIT = 200_000  # characters of one text shown in the raw view before "Show all"


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


def screen_tokens(pair: dict, left: str) -> tuple[int | None, int | None]:
    """(left, right) token counts of a pair's responses, where the pair carries them."""
    a, b = pair.get("response_a_tokens"), pair.get("response_b_tokens")
    return (a, b) if left == "a" else (b, a)


# Where a WORD JOINER (zero width, invisible in prose and in code alike) breaks link syntax: between "]" and "(" (inline
# links and images), between "]" and ":" (reference definitions, so no reference link or image can resolve), and after
# the "<" of an autolink. No markdown link or image survives; bare http(s) URLs are still linked by Streamlit.
_LINK_SYNTAX = re.compile(r"(?<=\])(?=[(:])|(?<=<)(?=[A-Za-z][A-Za-z0-9+.-]{1,31}:)")
# What can start markdown, math, HTML or an entity inside a line; at its start also a heading, list or quote marker.
_INLINE_ACTIVE = re.compile(r"([\\`*_\[\]<~$&])")
_LINE_START_ACTIVE = re.compile(r"^(\d*)([#>=+\-.)])")
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=\bwww)(?=\.)")  # where GFM would start a bare web link


def inert_markdown(text: str) -> str:
    """Markdown that renders like `text` except that links and images show as their source text, target included:
    nothing is fetched, and nothing but a bare http(s) URL can be clicked. Invisible: no character is shown differently.
    """
    return _LINK_SYNTAX.sub(WORD_JOINER, text)


def plain(text: str) -> str:
    """A short text a person typed (a name, a file name, a note) as markdown that shows exactly its characters, on one
    line (line breaks become spaces), for the app's own messages: the characters that could form emphasis, code, a
    link, an image, HTML, math or an entity are escaped, a leading block marker too, a WORD JOINER keeps web
    addresses from becoming links, and no colon starts a directive, an emoji shortcode or an icon
    (`faithful.neutral_colons`)."""
    escaped = _INLINE_ACTIVE.sub(r"\\\1", " ".join(str(text).split()))
    escaped = _AUTOLINK.sub(WORD_JOINER, _LINE_START_ACTIVE.sub(r"\1\\\2", escaped))
    return neutral_colons(escaped)


@functools.lru_cache(maxsize=256)
def shown_markdown(text: str) -> str:
    """What `st.markdown` gets for an untrusted text: faithful, then inert. Cached: a page shows the same texts on
    every rerun (a key press, a toggle), and rewriting one takes up to a few hundred milliseconds."""
    return inert_markdown(faithful_markdown(text))


def length_caption(text: str, tokens: int | None = None) -> str:
    words = f"{len(text):,} character{'' if len(text) == 1 else 's'}"
    return words if tokens is None else f"{words} · {tokens:,} token{'' if tokens == 1 else 's'}"


def untrusted_text(text: str, raw: bool = False, key: str | None = None) -> None:
    """Model or prompt text: faithful markdown, or verbatim when `raw`. A text longer than the view's limit shows its
    start, says how much is left out and, given a `key` for the toggle, offers all of it raw."""
    if not text.strip():
        st.caption("(empty)")
        return
    show_all = key is not None and st.session_state.get(f"show-all-{key}", False)
    if raw or show_all:
        shown, hidden = (text, 0) if show_all else cut(text, RAW_LIMIT)
        st.code(shown, language=None, wrap_lines=True)
    else:
        shown, hidden = cut(text, RENDER_LIMIT)
        st.markdown(shown_markdown(shown), anchors=False)
    if hidden or show_all:
        st.caption(f"Showing the first {len(shown):,} of {len(text):,} characters." if hidden else
                   f"All {len(text):,} characters, raw.")
        if key is not None:
            st.toggle(f"Show all {len(text):,} characters (raw)", key=f"show-all-{key}",
                      help="Long texts are cut so the page stays quick; this shows every character, unrendered.")


def prompt_title(messages: list[dict]) -> str:
    """ "**Prompt** 3 turns · 2,918 characters", for the line above `conversation`."""
    total = sum(len(str(m.get("content", ""))) for m in messages)
    turns = f"{len(messages)} turns · " if len(messages) > 1 else ""
    return f"**Prompt** :gray[{turns}{total:,} characters]"


def conversation(messages: list[dict], raw: bool = False, key: str | None = None, expanded: bool = False) -> None:
    """A prompt as a chat: one bubble per turn (system, user, assistant), so multi-turn prompts read naturally. In a
    box of limited height (it scrolls), unless `expanded`, so the responses start near the top of the page."""
    with st.container(key=f"ut-{'full' if expanded else 'prompt'}-{key or 'prompt'}"):
        for i, message in enumerate(messages):
            role = str(message.get("role", "user"))
            with st.chat_message(role, avatar=_AVATARS.get(role, ":material/chat:")):
                untrusted_text(str(message.get("content", "")), raw, None if key is None else f"{key}-turn-{i}")


def responses_side_by_side(left_title: str, left: str, right_title: str, right: str, raw: bool = False,
                           key: str = "responses", expanded: bool = False,
                           tokens: tuple[int | None, int | None] = (None, None)) -> None:
    """Two responses in equal columns (stacked on a phone), each titled with its length, in a box that scrolls
    (fitted to the window) or, `expanded`, shows the whole response."""
    for column, side, title, text, count in zip(st.columns(2, gap="medium"), ("left", "right"), (left_title,
                                                right_title), (left, right), tokens):
        with column:
            st.markdown(f"**{title}** :gray[{length_caption(text, count)}]")
            box = f"ut-{'full' if expanded else 'box'}-{key}-{side}"
            with st.container(border=True, key=box):
                untrusted_text(text, raw, f"{key}-{side}")


def flip(state_key: str) -> None:
    """A button callback for an on/off view setting (raw text, expanded boxes)."""
    st.session_state[state_key] = not st.session_state.get(state_key, False)


def view_controls() -> tuple[bool, bool]:
    """The Raw text (key V, verbatim) and Expand (key E) switches, in the current container; returns (raw, expanded)."""
    state = st.session_state
    for label, state_key, shortcut, tip in (
        ("Raw text", "raw_text", "V", "Show the exact characters instead of rendered markdown."),
        ("Expand", "expand_text", "E", "Show the prompt and both responses at full length (the page scrolls)."),
    ):
        on = state.get(state_key, False)
        st.button(label, key=f"view-{state_key}", shortcut=shortcut, on_click=flip, args=(state_key,), help=tip,
                  icon=":material/toggle_on:" if on else ":material/toggle_off:", type="tertiary")
    return state.get("raw_text", False), state.get("expand_text", False)


# --- CSS ----------------------------------------------------------------------------------------------------------
# Every container keyed "ut-..." holds untrusted text: long words wrap, headings are sized for a box, not a page;
# "ut-box-..." and "ut-prompt-..." scroll inside a height fitted to the window ("ut-full-...": expanded, no limit).
# On the Label page the choice bar ("choice-bar") is drawn first in the page (so Tab reaches the rationale box at
# once) but shown last (flex order), and sticks to the bottom of the window: visible whatever the text length.
_CSS = """
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] :is(p, li, td, th, h1, h2, h3, h4, h5, h6) {
    overflow-wrap: anywhere; }
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] h1 { font-size: 1.3rem !important; }
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] h2 { font-size: 1.2rem !important; }
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] h3 { font-size: 1.1rem !important; }
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] :is(h4, h5, h6) { font-size: 1rem !important; }
[class*="st-key-ut-"] [data-testid="stMarkdownContainer"] :is(h1, h2, h3, h4, h5, h6) {
    padding: 0.5rem 0 0.25rem 0 !important; }
[class*="st-key-ut-box-"] { max-height: max(12rem, calc(100vh - 33rem)); overflow-y: auto; }
[class*="st-key-ut-prompt-"] { max-height: max(6rem, 18vh); overflow-y: auto; }
[data-testid="stMainBlockContainer"] { padding-top: 3.5rem; padding-bottom: 1rem; }
[data-testid="stElementContainer"]:has(> [data-testid="stHtml"] > script:only-child) { display: none; }
[data-testid="stMain"]:focus { outline: none; }  /* focused by tab_from_the_top: no ring around the page */
[data-testid="stMain"]:focus::before { box-shadow: none !important; }
[data-testid="stLayoutWrapper"]:has(> .st-key-choice-bar) { order: 1; position: sticky; bottom: 0; z-index: 100;
    padding: 0.5rem 0 0.75rem 0; background-color: BACKGROUND; border-top: 1px solid rgba(128, 128, 128, 0.35); }
@media (max-width: 640px) {
    [data-testid="stMainBlockContainer"] { padding-left: 0.75rem; padding-right: 0.75rem; }
    [class*="st-key-ut-box-"] { max-height: 45vh; }
    .st-key-choice-bar button { padding: 0.25rem 0.6rem; min-height: 2.25rem; }
    .st-key-choice-bar, .st-key-choice-bar [data-testid="stHorizontalBlock"] { gap: 0.5rem; }
    [data-testid="stApp"] kbd { display: none !important; }  /* key hints: a phone has no keyboard */
}
"""
_BACKGROUND = {"dark": "#0e1117"}


def page_style() -> None:
    """Add the CSS above to the page (once per script run; takes no space)."""
    theme = getattr(st.context.theme, "type", None) or "light"
    st.html("<style>" + _CSS.replace("BACKGROUND", _BACKGROUND.get(theme, "#ffffff")) + "</style>")


def _page_script(body: str) -> None:
    """Run the app's own JavaScript `body` in the page (Streamlit runs it each time the text changes). Never pass
    anything a person or a model wrote."""
    st.html(f"<script>{body}</script>", unsafe_allow_javascript=True)


def focus_field(label: str) -> None:
    """Put the cursor in the text field labelled `label` once it is drawn, unless something else has the focus
    (Streamlit offers no autofocus)."""
    _page_script("""
        (function focus(tries) {
            const label = [...document.querySelectorAll('label')].find(l => l.innerText.trim() === LABEL);
            const input = label && document.getElementById(label.htmlFor);
            if (input) {
                if (!document.activeElement || document.activeElement === document.body) input.focus();
            } else if (tries > 0) {
                setTimeout(() => focus(tries - 1), 50);
            }
        })(100);""".replace("LABEL", json.dumps(label)))


def tab_from_the_top(pair_id: int) -> None:
    """When a pair is drawn and nothing has the focus, give it to the page's scrolling area (arrow keys then scroll
    it, shortcut keys still work), so the next Tab goes to the first field of the page (the rationale box) rather than
    to whatever follows the button pressed on the previous pair. `pair_id` makes the script new for each pair.
    It looks for five seconds (every 50 ms), not once: the element that had the focus on the previous screen (the
    sign-in field, a button) is removed only when the script run ends, and the focus falls to the page body then; on a
    busy machine that run took longer than the one second this once looked for."""
    _page_script(f"""/* pair {int(pair_id)} */
        (function settle(tries) {{
            const main = document.querySelector('[data-testid="stMain"]');
            if (main && (!document.activeElement || document.activeElement === document.body)) {{
                if (!main.hasAttribute('tabindex')) main.setAttribute('tabindex', '-1');
                main.focus({{preventScroll: true}});
            }}
            if (tries > 0) setTimeout(() => settle(tries - 1), 50);
        }})(100);""")
