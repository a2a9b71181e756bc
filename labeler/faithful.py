"""Model text as markdown that shows what the model wrote, at a bounded cost.

Streamlit renders GitHub-flavoured markdown plus math, emoji shortcodes and its own directives. Markdown alone would
show a model's text differently from what it wrote: single newlines join lines (a poem, an "A.\\nB.\\nC." list become
one paragraph), the indentation of unfenced code disappears, `$x$` turns into math, `:smile:` into an emoji and
`:red[...]` into coloured text. `faithful_markdown` rewrites the text so that markdown shows it as written:

- every line break inside a block becomes a hard break (two trailing spaces); `labeler/render.py` also styles
  paragraphs with `white-space: pre-wrap`, so runs of spaces stay visible;
- the leading spaces of a paragraph's continuation lines, which markdown drops, become no-break spaces;
- `$` is escaped outside code (no math; a fenced ```math block still renders as math, the one way to ask for it);
- `:name:` and `:name[` get a WORD JOINER after the colon, so no shortcode or directive is expanded;
- a run of at least LONG_RUN characters without a space has its ASCII punctuation escaped: it shows literally, and
  markdown's emphasis matching, whose cost grows with the square of the delimiters in a paragraph, never sees it.

Fenced and indented code blocks, inline code spans and raw HTML blocks (shown as text) are left exactly as they are.
Headings, lists, tables, emphasis and links keep their markdown meaning (links are made inert in `render.py`).
The block structure comes from markdown-it-py, a CommonMark parser like the one Streamlit's browser side uses.

Cost: the rewrite is linear, and the browser's is bounded by rendering at most RENDER_LIMIT characters of any text as
markdown (`cut`); the rest is one click away as raw text.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

RENDER_LIMIT = 20_000  # characters of one text rendered as markdown; the rest is shown on request, raw
LONG_RUN = 300  # a run of this many non-space characters is shown literally (no markdown inside it)
NBSP = "\u00a0"
WORD_JOINER = "\u2060"

_parser = MarkdownIt("commonmark").enable("table")
_parser.core.ruler.disable(["inline", "text_join"])  # only the block structure is needed: linear, fast
_INLINE_BLOCKS = {"paragraph_open", "heading_open", "table_open"}
_VERBATIM_BLOCKS = {"fence", "code_block", "html_block"}
_BACKTICKS = re.compile(r"`+")
_LONG_RUN = re.compile(rf"\S{{{LONG_RUN},}}")
_ASCII_PUNCTUATION = re.compile(r"""([!-/:-@\[-`{-~])""")
_DOLLAR = re.compile(r"(\\*)\$")
# The colon that starts a Streamlit directive (":red[...]", its bracket escaped or not) with the backslashes before
# it, and the one that starts an emoji shortcode (":smile:") or an icon (":material/home:").
_DIRECTIVE = re.compile(r"(\\*):(?=[A-Za-z][\w-]*\\?\[)")
_SHORTCODE = re.compile(r":(?=[A-Za-z+-][\w+-]*(?:/[\w-]+)?:)")
_LIST_OR_QUOTE = re.compile(r"^[ \t]*(?:[-+*][ \t]|\d{1,9}[.)][ \t]|>)")


def cut(text: str, limit: int = RENDER_LIMIT) -> tuple[str, int]:
    """(the part of `text` to render, characters left out): at most `limit` characters, ending at a line end when
    one falls in the last quarter, so a cut seldom splits a line."""
    if len(text) <= limit:
        return text, 0
    end = text.rfind("\n", limit * 3 // 4, limit)
    end = limit if end < 0 else end
    return text[:end], len(text) - end


def faithful_markdown(text: str) -> str:
    """Markdown that Streamlit shows as `text` was written (see the module docstring). Linear in len(text)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    verbatim = [False] * len(lines)
    inline_blocks: list[tuple[int, int, int | None]] = []  # (first line, end, content column of a paragraph)
    tokens = _parser.parse("\n".join(lines))
    for token, following in zip(tokens, tokens[1:] + [None]):
        if token.map is None:
            continue
        start, end = token.map
        if token.type in _VERBATIM_BLOCKS:
            verbatim[start:end] = [True] * (end - start)
            if token.type == "fence" and token.info.split()[:1] == ["math"]:
                _math_block(lines, start, end, token.content)
        elif token.type in _INLINE_BLOCKS:
            column = None
            if token.type == "paragraph_open" and following is not None and following.type == "inline":
                column = max(lines[start].find(following.content.split("\n", 1)[0]), 0)
            inline_blocks.append((start, end, column))
    for start, end, column in inline_blocks:
        lines[start:end] = _rewrite_block(lines[start:end], column)
    for i in range(len(lines) - 1):  # a newline between two lines of one block becomes a hard break
        if not verbatim[i] and lines[i].strip() and lines[i + 1].strip() and not verbatim[i + 1]:
            lines[i] += "  "
    return "\n".join(lines)


def _math_block(lines: list[str], start: int, end: int, content: str) -> None:
    """A closed ```math fence as a `$$` block, in place (the only math Streamlit renders here); left as code when its
    content holds "$$", which would end the block early."""
    closing = lines[end - 1].strip()
    if end - start >= 2 and closing[:3] in ("```", "~~~") and not closing.strip(closing[0]) and "$$" not in content:
        for i in (start, end - 1):
            lines[i] = lines[i][: len(lines[i]) - len(lines[i].lstrip())] + "$$"


def _rewrite_block(lines: list[str], column: int | None) -> list[str]:
    """One paragraph, heading or table: a paragraph's continuation indents kept (`column`: where its first line's
    text starts), then the inline rewrites outside code spans."""
    shown = lines if column is None else [lines[0]] + [_keep_indent(line, column) for line in lines[1:]]
    text = "\n".join(shown)
    out, position = [], 0
    for start, end in _code_spans(text):
        out += [_rewrite_inline(text[position:start]), text[start:end]]
        position = end
    out.append(_rewrite_inline(text[position:]))
    return "".join(out).split("\n")


def _keep_indent(line: str, column: int) -> str:
    """A continuation line's indentation beyond `column` (a tab counts four) as no-break spaces, which markdown does
    not strip. List items and quotes are left alone: their indentation is markdown's nesting."""
    body = line.lstrip(" \t")
    if body == line or _LIST_OR_QUOTE.match(line):
        return line
    indent = len(line[: len(line) - len(body)].replace("\t", "    "))
    return NBSP * max(indent - column, 0) + body


def _code_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each inline code span: a run of n backticks up to the next run of exactly n (CommonMark).
    Linear: each run length keeps a pointer to its next unused run."""
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text)]
    by_length: dict[int, list[int]] = {}
    for index, (start, end) in enumerate(runs):
        by_length.setdefault(end - start, []).append(index)
    pointer = dict.fromkeys(by_length, 0)
    spans, i = [], 0
    while i < len(runs):
        start, end = runs[i]
        same = by_length[end - start]
        while pointer[end - start] < len(same) and same[pointer[end - start]] <= i:
            pointer[end - start] += 1
        escaped = _backslashes_before(text, start) % 2
        if escaped or pointer[end - start] == len(same):  # escaped, or never closed: literal backticks
            i += 1
            continue
        closing = same[pointer[end - start]]
        spans.append((start, runs[closing][1]))
        i = closing + 1
    return spans


def _backslashes_before(text: str, position: int) -> int:
    count = 0
    while position - count > 0 and text[position - count - 1] == "\\":
        count += 1
    return count


def _rewrite_inline(text: str) -> str:
    text = _LONG_RUN.sub(_literal_run, text)
    # An even number of backslashes before a `$` escape each other: one more escapes the dollar.
    text = _DOLLAR.sub(lambda m: m.group(1) + ("$" if len(m.group(1)) % 2 else "\\$"), text)
    return neutral_colons(text)


def _literal_run(run: re.Match) -> str:
    """A long run with every ASCII punctuation character escaped; a WORD JOINER after each colon keeps an icon
    shortcode from forming (Streamlit expands ":material/home:" even from escaped colons)."""
    return _ASCII_PUNCTUATION.sub(r"\\\1", run.group()).replace("\\:", "\\:" + WORD_JOINER)


def neutral_colons(text: str) -> str:
    """Markdown `text` with no Streamlit directive, emoji shortcode or icon: the colon of ":name[" is escaped (unless
    it is already), a WORD JOINER follows the first colon of ":name:". Both are invisible."""
    text = _DIRECTIVE.sub(lambda m: m.group(1) + (":" if len(m.group(1)) % 2 else "\\:"), text)
    return _SHORTCODE.sub(":" + WORD_JOINER, text)
