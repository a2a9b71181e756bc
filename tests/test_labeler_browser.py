"""The labeling app in a real browser: Debian chromium driven by Playwright against `streamlit run` on 127.0.0.1.

    .venv/bin/python -m pytest tests/test_labeler_browser.py -q      # needs /usr/bin/chromium (.ci/run installs it)

One server per module (tests/browser.py) on a free port with a temporary database; each test makes its own round,
which is then the latest one and the one annotators are served.
"""

from __future__ import annotations

import re
import time

import pytest

from labeler.labeling import REPEAT_GUARD_SECONDS
from labeler.render import shown_left
from store import Judgment
from tests.browser import screenshot, sign_in, wait_idle
from tests.labeling_data import judge, make_round, simple_items

pytest_plugins = ["tests.browser"]
pytestmark = pytest.mark.browser

PAIR_CAPTION = re.compile(r"^Pair (\d+)$")


def pair_on_screen(page) -> int | None:
    """The pair the Label page shows (None: nothing left), once it shows either (a sign-in's rerun may be running)."""
    page.wait_for_function("""() => [...document.querySelectorAll('p')].some(p => /^Pair \\d+$/.test(p.innerText))
        || document.body.innerText.includes('Nothing left')""")
    found = page.get_by_text(PAIR_CAPTION)
    return int(PAIR_CAPTION.match(found.inner_text()).group(1)) if found.count() else None


def press_and_wait(page, key: str, previous: int | None) -> int | None:
    """Press a shortcut for the pair on screen; wait for the next one (or the end); returns its id."""
    time.sleep(REPEAT_GUARD_SECONDS + 0.1)  # presses right after a pair appears are ignored as double clicks
    page.keyboard.press(key)
    page.wait_for_function(
        """previous => {
            const caption = [...document.querySelectorAll('p')].find(p => /^Pair \\d+$/.test(p.innerText));
            return caption ? caption.innerText !== 'Pair ' + previous
                           : document.body.innerText.includes('Nothing left');
        }""",
        arg=previous,
    )
    wait_idle(page)
    return pair_on_screen(page)


# --- the tests ----------------------------------------------------------------------------------------------------
def test_label_five_pairs_with_the_keyboard_and_undo_one(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(6, "keyboard"))
    alice, token = store.add_annotator("kb-alice")
    page = new_page()
    sign_in(page, url, token)
    screenshot(page, "label")
    seen, keys = [], ["a", "b", "t", "x", "a"]
    current = pair_on_screen(page)
    for key in keys:
        if key == "b":
            page.keyboard.press("2")  # strength: clear
            page.locator("[data-testid=stBaseButton-primary]", has_text="Clear").first.wait_for()
        seen.append(current)
        current = press_and_wait(page, key, current)
    assert seen == pair_ids[:5] and current == pair_ids[5]

    previous = current
    page.keyboard.press("u")  # undo: the fifth pair comes back
    page.get_by_text(f"Pair {pair_ids[4]}", exact=True).wait_for()
    wait_idle(page)
    assert previous != pair_on_screen(page) == pair_ids[4]

    rows = store.judgments(annotator_id=alice.id)
    expected = {"a": lambda left: left, "b": lambda left: "b" if left == "a" else "a", "t": lambda _: "tie",
                "x": lambda _: "both_bad"}
    assert [r["pair_id"] for r in rows] == pair_ids[:4]
    for row, key in zip(rows, keys):
        left = shown_left(row["pair_id"], alice.id)
        assert row["shown_left"] == left and row["choice"] == expected[key](left)
        assert row["seconds_spent"] >= REPEAT_GUARD_SECONDS
    assert [r["strength"] for r in rows] == [None, "clear", None, None]

    assert press_and_wait(page, "t", pair_ids[4]) == pair_ids[5]  # judged again after the undo
    assert [(r["pair_id"], r["choice"]) for r in store.judgments(annotator_id=alice.id)][4:] == [(pair_ids[4], "tie")]


def test_two_annotators_never_get_the_same_pair(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(6, "overlap"), overlap=1)
    pages, annotators = [], []
    for name in ("ov-bob", "ov-carol"):
        annotator, token = store.add_annotator(name)
        page = new_page()
        sign_in(page, url, token)
        pages.append(page)
        annotators.append(annotator)
    served: dict[int, list[int]] = {0: [], 1: []}
    current = [pair_on_screen(page) for page in pages]
    assert current[0] != current[1]
    while any(c is not None for c in current):
        for i, page in enumerate(pages):
            if current[i] is not None:
                served[i].append(current[i])
                current[i] = press_and_wait(page, "a", current[i])
    print("SERVED", served, [(r["pair_id"], r["annotator_id"]) for r in store.judgments()], annotators)
    assert not set(served[0]) & set(served[1])
    assert sorted(served[0] + served[1]) == pair_ids
    rows = [r for r in store.judgments() if r["pair_id"] in pair_ids]
    assert sorted(r["pair_id"] for r in rows) == pair_ids  # exactly one judgment per pair
    for i, annotator in enumerate(annotators):
        assert sorted(r["pair_id"] for r in rows if r["annotator_id"] == annotator.id) == sorted(served[i])


XSS_PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "<img src=x onerror=alert(1)>",
    '<svg onload="window.__xss=1"></svg>',
    '<svg><a xlink:href="javascript:window.__xss=1"><text y="20">svg link</text></a></svg>',
    '<iframe src="javascript:parent.__xss=1"></iframe>',
    "<iframe srcdoc=\"<script>parent.__xss=1</script>\"></iframe>",
    '<a href="javascript:window.__xss=1">html javascript link</a>',
    '<a href="&#x6A;avascript:window.__xss=1">entity-encoded link</a>',
    "[markdown javascript link](javascript:window.__xss=1)",
    "[mixed-case link](JaVaScRiPt:window.__xss=1)",
    "[entity link](&#106;avascript:window.__xss=1)",
    "![markdown image](javascript:window.__xss=1)",
    "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![data image](data:image/svg+xml,<svg onload='parent.__xss=1'/>)",
    "[reference link][evil]\n\n[evil]: javascript:window.__xss=1",
    "<javascript:window.__xss=1>",
    "[vbscript link](vbscript:msgbox(1))",
    '<details open ontoggle="window.__xss=1"><summary>details</summary>x</details>',
    '<body onload="window.__xss=1">',
    '<div onmouseover="window.__xss=1" style="width:100%;height:50px">hover me</div>',
    '<input autofocus onfocus="window.__xss=1">',
    '<object data="javascript:window.__xss=1"></object>',
    '<embed src="javascript:window.__xss=1">',
    '<video><source onerror="window.__xss=1"></video>',
    '<audio src=x onerror="window.__xss=1"></audio>',
    "<math><mtext><table><mglyph><style><img src=x onerror=\"window.__xss=1\">",
    '<meta http-equiv="refresh" content="0;url=javascript:window.__xss=1">',
    '<form action="javascript:window.__xss=1"><button>form button</button></form>',
    "<scr<script>ipt>window.__xss=1</scr</script>ipt>",
    "$\\href{javascript:window.__xss=1}{katex link}$",
    "![remote image, would be fetched](http://example.invalid/pixel.png)",
    "[link text hiding its target](http://example.invalid/phish)",
    '<style>@import "javascript:window.__xss=1";</style>',
]


# Elements markdown never needs and a payload would: none may appear inside rendered text (KaTeX's own svg aside).
LIVE_TAGS = ["script", "iframe", "frame", "object", "embed", "img", "video", "audio", "source", "details", "input",
             "form", "button", "meta", "style", "link", "base", "body", "math", "svg"]


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


def test_xss_payloads_in_prompts_and_responses_stay_inert(server, new_page):
    url, store = server
    chunks = _split(XSS_PAYLOADS, 4)
    messages = [{"role": "system", "content": "\n\n".join(chunks[0])},
                {"role": "user", "content": "\n\n".join(chunks[1])},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "XSS-PROMPT-END " + chunks[1][0]}]
    response_a, response_b = "\n\n".join(chunks[2]) + "\n\nXSS-A-END", "\n\n".join(chunks[3]) + "\n\nXSS-B-END"
    _, (pair_id,) = make_round(store, [(messages, response_a, response_b)], overlap=2)
    annotator, token = store.add_annotator("xss-alice")
    page = new_page()
    sign_in(page, url, token)
    for marker in ("XSS-PROMPT-END", "XSS-A-END", "XSS-B-END"):
        page.get_by_text(marker).first.wait_for(state="attached")
    page.context.route(re.compile(r"^(?!http://127\.0\.0\.1)"), lambda route: route.abort())  # stay offline
    main = page.locator("[data-testid=stMain]")
    for link in main.locator("[data-testid=stMarkdownContainer] a").all():  # click what became a link: none may run
        link.click(timeout=5_000, no_wait_after=True)
    page.evaluate("""() => document.querySelectorAll('[data-testid=stMain] [data-testid=stMarkdownContainer] *')
        .forEach(el => ['mouseover', 'mouseenter', 'focus', 'toggle', 'load', 'error']
            .forEach(type => el.dispatchEvent(new Event(type))))""")  # fire any event handler that survived
    page.wait_for_timeout(500)
    screenshot(page, "xss-label")
    _assert_inert(page)
    assert page.get_by_text("<script>window.__xss=1</script>").count() >= 1  # shown as text, not run
    shown = page.evaluate("document.querySelector('[data-testid=stMain]').innerText.replaceAll('\\u2060', '')")
    assert "[link text hiding its target](http://example.invalid/phish)" in shown  # a link shows where it points

    page.get_by_role("button", name=re.compile("^Raw text")).click()  # the verbatim view of the same texts
    page.get_by_text("XSS-A-END").first.wait_for()
    wait_idle(page)
    _assert_inert(page)

    # An admin reviewing the pair sees the same texts, plus rationales carrying payloads.
    admin, admin_token = store.add_annotator("xss-root", "admin")
    other, _ = store.add_annotator("xss-bob")
    judge(store, Judgment(pair_id, other.id, "a", rationale=XSS_PAYLOADS[1], shown_left="a"))
    judge(store, Judgment(pair_id, annotator.id, "b", rationale=XSS_PAYLOADS[9], shown_left="b"))
    review = new_page()
    sign_in(review, url, admin_token, "review")
    review.get_by_text("XSS-B-END").first.wait_for()
    screenshot(review, "xss-review")
    _assert_inert(review)


def _assert_inert(page) -> None:
    """No payload ran (no flag, no dialog in any page of the context) and none left a live element behind."""
    for any_page in page.context.pages:
        assert any_page.evaluate("typeof window.__xss") == "undefined", any_page.url
    assert page.dialogs == []
    live = page.evaluate(
        """tags => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stMarkdownContainer] *')]
            .filter(el => !el.closest('.katex, [data-testid=stHeaderActionElements]'))  // Streamlit's own svg
            .filter(el => tags.includes(el.tagName.toLowerCase())
                || [...el.attributes].some(a => /^on/i.test(a.name)
                    || (/^(href|src|srcdoc|action|data|xlink:href|formaction|poster)$/i.test(a.name)
                        && !/^(https?:|mailto:|#)/i.test(a.value.trim()))))
            .map(el => el.outerHTML.slice(0, 200))""",
        LIVE_TAGS,
    )
    assert live == [], "\n".join(live)
    assert page.locator("[data-testid=stMain] [data-testid=stMarkdownContainer]").count() > 5  # it did render


def test_visitors_and_annotators_are_refused_admin_pages(server, new_page):
    url, store = server
    _, token = store.add_annotator("refused-alice")
    page = new_page()
    for path in ("", "data", "review", "annotators", "dashboard"):
        page.goto(f"{url}/{path}")
        page.get_by_label("Sign-in token", exact=True).wait_for()
        wait_idle(page)
        assert page.get_by_role("heading", name=re.compile("Data|Review|Annotators|Dashboard")).count() == 0
        assert page.get_by_text("Response A", exact=True).count() == 0

    page.get_by_label("Sign-in token", exact=True).fill("made-up-token")
    page.keyboard.press("Enter")
    page.get_by_text("That token is not valid").wait_for()

    sign_in(page, url, token, "data")  # and then signed in by the session cookie for each typed link
    for path, marker in (("data", "Import"), ("annotators", "Add someone"), ("review", "Pair to review"),
                         ("dashboard", "Activity")):
        if path != "data":
            page.goto(f"{url}/{path}")
        page.get_by_text("This page is for admins only").wait_for()
        wait_idle(page)
        assert page.get_by_text(marker).count() == 0
    screenshot(page, "refused")
