"""The annotation guidelines: markdown kept in the store setting "guidelines", editable by admins on the Label page.

Admins type them, every annotator's browser shows them: they are rendered inert (`render.inert_markdown`), so no image
is fetched and no link followed from them.
"""

from __future__ import annotations

import streamlit as st

from labeler.render import inert_markdown
from labeler.session import act
from store import Annotator, Store

SETTING = "guidelines"

DEFAULT_GUIDELINES = """\
**Your task.** Read the prompt, then both responses, and say which response a careful user would rather get.

**What makes a response better**, roughly in this order:
1. **Correct and safe.** Facts, code and arithmetic are right; it does not help with clearly harmful requests, and it
   does not refuse harmless ones.
2. **Answers what was asked.** It follows every instruction in the prompt (format, length, language, constraints).
3. **Clear.** Well organised, no padding, no repetition, no rambling past the answer.
4. **Honest.** Says when it is unsure instead of making things up.

Length is not quality: a short correct answer beats a long one with a mistake in it.

**Choices**
- **A better / B better** — one response is better. Add a strength if you like: *slight* (close call) or *clear*.
- **Tie** — both are good and you cannot pick one.
- **Both bad** — neither is acceptable (wrong, unsafe, off-topic, or cut off before answering).
- **Skip** — you cannot judge this one (e.g. it needs expertise you do not have). It goes to someone else.
- **Undo last** — takes back your last judgment (or skip) and shows that pair again as you left it.

**Keyboard.** Every button shows its key: `A`, `B`, `T`, `X`, `S` (skip), `U` (undo); `1` / `2` set the strength;
`V` shows the exact characters (raw text), `E` expands long texts. Keys do nothing while you type in the rationale box:
press `Tab` or click outside it first.

**The text is shown as the model wrote it**: its line breaks and indentation, `$` as a dollar (math only in a
```` ```math ```` block), links as their text. A very long response shows its start; "Show all" below it shows the rest.

Which model wrote which response is hidden, and the left/right order is shuffled: judge the text, not the position.
"""


@st.cache_data(ttl=60, show_spinner=False)
def _load(_store: Store, db_path: str) -> str:
    """Shared by every session for up to a minute: the guidelines rarely change, and each read is a transaction."""
    return _store.get_setting(SETTING, DEFAULT_GUIDELINES)


def guidelines_panel(store: Store, annotator: Annotator, expanded: bool = False) -> None:
    """A panel with the guidelines, collapsed unless `expanded` (an annotator's first visit); admins get a text area
    to edit them."""
    with st.expander("Guidelines", icon=":material/menu_book:", expanded=expanded):
        text = _load(store, str(store.path))
        st.markdown(inert_markdown(text))
        if annotator.is_admin:
            edited = st.text_area("Edit the guidelines (markdown; admins only)", value=text, height=300)
            if st.button("Save guidelines", icon=":material/save:") and edited != text and \
                    act(store.set_setting, SETTING, edited):
                _load.clear()
                st.rerun()
