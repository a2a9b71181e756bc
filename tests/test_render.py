"""Text rewrites for display (no browser): model text shown as written (`labeler/faithful.py`), typed text shown plain
(`labeler/render.py` `plain`). Rendered with markdown-it-py, a CommonMark parser, as a stand-in for Streamlit's
browser-side one; tests/test_render_browser.py checks the real page.

    .venv/bin/python -m pytest tests/test_render.py -q
"""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from labeler.faithful import LONG_RUN, NBSP, RENDER_LIMIT, WORD_JOINER, cut, faithful_markdown
from labeler.render import inert_markdown, plain, shown_markdown

COMMONMARK = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def shown_text(markdown: str) -> str:
    """What a browser shows of rendered markdown (code blocks aside): tags dropped, <br> as a newline, block ends as a
    blank line, other newlines and runs of spaces as one space, entities decoded, no-break spaces as spaces, word
    joiners gone."""
    rendered = COMMONMARK.render(markdown)
    rendered = re.sub(r"<br />\n?", "\x00", rendered)
    rendered = re.sub(r"</(p|h\d|li|pre)>\n?", "\x01", rendered)
    rendered = re.sub(r"[ \n]+", " ", re.sub(r"<[^>]+>", "", rendered))
    text = html.unescape(rendered).replace("\x00 ", "\x00").replace("\x01 ", "\x01")
    text = text.replace("\x00", "\n").replace("\x01", "\n\n").replace(NBSP, " ").replace(WORD_JOINER, "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def test_single_newlines_are_line_breaks():
    poem = "Roses are red\nViolets are blue\n\nA.\nB.\nC."
    assert shown_text(faithful_markdown(poem)) == poem
    assert shown_text(poem) != poem  # plain markdown joins the lines: what the rewrite is for
    assert "A.<br />\nB.<br />\nC." in COMMONMARK.render(faithful_markdown(poem))


def test_indentation_of_unfenced_code_is_kept():
    code = "Here:\ndef f(x):\n    if x:\n        return 1\n    return 2"
    assert shown_text(faithful_markdown(code)) == code
    assert "\n    if x:" not in shown_text(code)  # markdown alone drops it


def test_list_items_keep_their_nesting_and_their_continuation_lines():
    text = "- first\n  continued\n  - nested\n- second\n\n1. step\n   more\n       indented four"
    rendered = COMMONMARK.render(faithful_markdown(text))
    assert rendered.count("<ul>") == 2 and rendered.count("<ol>") == 1  # still lists, one nested
    assert "first<br />\ncontinued" in rendered
    assert f"more<br />\n{NBSP * 4}indented four" in rendered  # indentation beyond the item's own text is kept


def test_fences_code_spans_and_indented_code_are_left_exactly_as_written():
    fenced = "```python\nx = '$5'  # :smile:\n    y = 1\n```"
    indented = "Text\n\n    $x$ :red[y]\n    z"
    assert faithful_markdown(fenced) == fenced
    assert faithful_markdown(indented).endswith("\n\n    $x$ :red[y]\n    z")
    assert "`$x$ and :smile:`" in faithful_markdown("Inline `$x$ and :smile:` code")


def test_dollars_show_as_dollars_outside_math_fences():
    for text in ("It costs $5 and $10.", "Math: $x^2$", "Escaped \\$y$ and \\\\$z$", "$$\nx^2\n$$"):
        shown = faithful_markdown(text)
        # every dollar is escaped by an odd number of backslashes: no math can start
        assert all(len(m.group(1)) % 2 == 1 for m in re.finditer(r"(\\*)\$", shown)), shown
    assert shown_text(faithful_markdown("Math: $x^2$ costs $5")) == "Math: $x^2$ costs $5"


def test_a_math_fence_becomes_a_math_block_unless_it_holds_double_dollars():
    assert faithful_markdown("See:\n\n```math\nx^2 + y^2\n```\n") == "See:\n\n$$\nx^2 + y^2\n$$\n"
    tricky = "```math\n$$\n<b>x</b>\n```"
    assert faithful_markdown(tricky) == tricky  # "$$" would end a math block early: it stays code


def test_shortcodes_and_directives_are_not_expanded():
    shown = faithful_markdown("Nice :smile: and :material/home: and :red[red] and :blue-background[x]")
    assert f":{WORD_JOINER}smile:" in shown and f":{WORD_JOINER}material/home:" in shown
    assert "\\:red[red]" in shown and "\\:blue-background[x]" in shown
    assert shown_text(shown) == "Nice :smile: and :material/home: and :red[red] and :blue-background[x]"
    assert faithful_markdown("12:30:45 and http://example.com/a:b") == "12:30:45 and http://example.com/a:b"


def test_headings_lists_and_emphasis_keep_their_markdown_meaning():
    rendered = COMMONMARK.render(faithful_markdown("# Title\n\nSome **bold** text\n\n| a | b |\n|---|---|\n| 1 | 2 |"))
    assert "<h1>Title</h1>" in rendered and "<strong>bold</strong>" in rendered and "<table>" in rendered


def test_long_runs_are_literal():
    run = "a*" * (LONG_RUN * 2)
    shown = faithful_markdown(f"before {run} after")
    assert "<em>" not in COMMONMARK.render(shown) and shown_text(shown) == f"before {run} after"
    short = "a*b*c"  # a short word keeps its emphasis
    assert "<em>" in COMMONMARK.render(faithful_markdown(short))
    icons = ":material/home:" * (LONG_RUN // 10)  # a run made of shortcodes expands none of them
    assert f":{WORD_JOINER}material" in faithful_markdown(icons)


def test_cut_stops_at_a_line_end_and_counts_what_it_leaves_out():
    text = ("line of text\n" * 3000)[:-1]
    shown, hidden = cut(text)
    assert len(shown) <= RENDER_LIMIT and shown.endswith("line of text") and len(shown) + hidden == len(text)
    word = "x" * 200_000
    assert cut(word) == (word[:RENDER_LIMIT], 200_000 - RENDER_LIMIT)
    assert cut("short") == ("short", 0)


def _texts():
    """Texts made of words, spaces, newlines, dollars and colons, whose lines may be indented after a text line."""
    word = st.text(alphabet="abcxyz$:!?,", min_size=1, max_size=8)
    line = st.lists(word, min_size=1, max_size=6).map(" ".join)
    indented = st.tuples(st.integers(0, 8), line).map(lambda t: " " * t[0] + t[1])
    paragraph = st.tuples(line, st.lists(indented, max_size=4)).map(lambda t: "\n".join([t[0], *t[1]]))
    return st.lists(paragraph, min_size=1, max_size=4).map("\n\n".join)


@settings(max_examples=300, deadline=None)
@given(_texts())
def test_what_is_shown_is_what_was_written(text):
    assert shown_text(faithful_markdown(text)) == text.strip("\n")


def test_the_shown_markdown_is_faithful_then_inert():
    text = "![tracker](http://tracker.example/p.png)\nsecond line $5"
    shown = shown_markdown(text)
    assert shown == inert_markdown(faithful_markdown(text))
    assert "<img" not in COMMONMARK.render(shown) and "](" not in shown


def test_plain_shows_a_typed_text_as_its_characters_and_nothing_else():
    for name in ("![n](http://127.0.0.1:9/x.png)", "[click](data:text/html,<script>x</script>)", "**bold** _x_ `c`",
                 ":red[x] :smile: :material/home:", "# heading", "1. list", "a & b &amp; <b>c</b>", "$x$ ~~s~~",
                 "mallory@example.com", "back\\slash \\*"):
        rendered = COMMONMARK.render(plain(name))
        assert not re.search(r"<(?!/?p>)", rendered), (name, rendered)  # one paragraph, no other element
        assert shown_text(plain(name)) == name
    assert plain("two\nlines") == "two lines"
