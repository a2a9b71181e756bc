"""What the pages show and how, in a real browser (Debian chromium through Playwright against `streamlit run`):
text as the model wrote it, huge responses, the choice bar in view on a laptop and a phone, nothing fetched from
what a person typed, the export download, and the small things (focus, Tab, pace, guidelines on a first visit).

    .venv/bin/python -m pytest tests/test_render_browser.py -q      # needs /usr/bin/chromium
"""

from __future__ import annotations

import http.server
import io
import re
import threading
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labeler.faithful import RENDER_LIMIT, cut
from labeler.labeling import REPEAT_GUARD_SECONDS
from store import Candidates, Judgment, PromptIn, ResponseIn, Store
from tests.browser import REPO, screenshot, sign_in, wait_idle
from tests.labeling_data import make_round, simple_items

pytest_plugins = ["tests.browser"]
pytestmark = pytest.mark.browser

SLOW = 90_000  # ms: a generous bound for huge texts on a loaded machine (speed is bench/render_bench.py's business)


def round_of(store: Store, items: list[tuple[str, str, str]], tokens=(None, None), overlap: int = 1) -> list[int]:
    """A new (latest) round of pairs (prompt, response a, response b) whose responses carry `tokens`; pair ids."""
    checkpoint = store.register_checkpoint("base", "render-test")
    round_id = store.new_round(checkpoint, overlap_target=overlap)
    prompt_ids = store.add_prompts([PromptIn([{"role": "user", "content": p}], "render-test") for p, _, _ in items]).ids
    summary = store.add_candidates(round_id, "samples", [
        Candidates(prompt_id, [ResponseIn(prompt_id, checkpoint, text, {}, None, count, "stop")
                               for text, count in zip((a, b), tokens)], [(0, 1)])
        for prompt_id, (_, a, b) in zip(prompt_ids, items)
    ])
    return sorted(summary.pair_ids)


def judge(store: Store, pair_id: int, annotator_id: int, choice: str, **fields) -> None:
    """A judgment as the Label page makes it: on a leased pair."""
    store.hold_pair(annotator_id, pair_id)
    store.submit_judgment(Judgment(pair_id, annotator_id, choice, shown_left="a", **fields))


def box_with(page, marker: str):
    """The response box (scrolling or expanded) whose text holds `marker`."""
    return page.locator("[class*='st-key-ut-box-'], [class*='st-key-ut-full-']").filter(has_text=marker).last


def shown(locator) -> str:
    """innerText as a reader sees it: word joiners dropped, no-break spaces as spaces."""
    return locator.evaluate("e => e.innerText.replaceAll('\\u2060', '').replaceAll('\\u00a0', ' ')")


# --- A: faithful rendering ----------------------------------------------------------------------------------------
WRITTEN = ("Roses are red\nViolets are blue\n\nA.\nB.\nC.\n\ndef f(x):\n    if x:\n        return 1\n    return 2\n\n"
           "# A heading inside the answer\n\nIt costs $5, or $x^2$ in math :smile: :red[not red]\n\n"
           "```math\nx^2 + 1\n```\nEND-OF-A")


def test_a_response_is_shown_as_the_model_wrote_it(server, new_page):
    url, store = server
    (pair_id,) = round_of(store, [("Write a poem, a list and code.", WRITTEN, "A short other answer.")],
                          tokens=(123, 5))
    _, token = store.add_annotator("faithful-alice")
    page = new_page(height=1200)
    sign_in(page, url, token)
    box = box_with(page, "END-OF-A")
    box.wait_for()
    screenshot(page, "faithful")
    text = shown(box)
    for part in ("Roses are red\nViolets are blue", "A.\nB.\nC.",
                 "def f(x):\n    if x:\n        return 1\n    return 2",
                 "It costs $5, or $x^2$ in math :smile: :red[not red]"):
        assert part in text, (part, text)
    assert box.locator(".katex").count() == 1  # the ```math fence, and nothing else, is math
    heading, paragraph = (box.locator(tag).first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
                          for tag in ("h1", "p"))
    assert heading <= 1.4 * paragraph  # sized for the box, not a page title
    assert page.get_by_text(f"{len(WRITTEN):,} characters · 123 tokens").count() == 1
    assert page.get_by_text("21 characters · 5 tokens").count() == 1

    page.keyboard.press("v")  # raw text: the exact characters
    box.locator("code").first.wait_for()
    wait_idle(page)
    assert box.locator("code").inner_text() == WRITTEN
    page.keyboard.press("v")
    box.locator("h1").wait_for()

    page.keyboard.press("e")  # expanded: the whole response, no scrolling inside the box
    page.locator("[class*='st-key-ut-full-']").first.wait_for()
    wait_idle(page)
    full = box_with(page, "END-OF-A")
    assert full.evaluate("e => e.scrollHeight <= e.clientHeight + 1")
    page.keyboard.press("e")
    assert store.judgments(pair_id=pair_id) == []  # the view keys judge nothing


# --- B: bounded rendering -----------------------------------------------------------------------------------------
HUGE_PROSE = ("The model wrote this line of ordinary prose, one of very many.\n" * 16_000)[:999_990] + "\nHUGE-END"
HUGE_WORD = "a*" * 100_000  # one 200,000-character word of emphasis delimiters: minutes to render unbounded


def test_huge_responses_appear_cut_with_show_all(server, new_page):
    url, store = server
    prose_pair, word_pair = round_of(store, [("Say a lot.", HUGE_PROSE, "Brief."),
                                             ("Say one word.", HUGE_WORD, "Word.")], overlap=2)
    _, token = store.add_annotator("huge-alice")
    page = new_page()
    page.set_default_timeout(SLOW)
    sign_in(page, url, token)
    page.get_by_text(f"Pair {prose_pair}", exact=True).wait_for()
    page.get_by_text(f"Showing the first {len(cut(HUGE_PROSE)[0]):,} of {len(HUGE_PROSE):,} characters.").wait_for()
    assert page.get_by_text("HUGE-END").count() == 0
    page.get_by_text(f"Show all {len(HUGE_PROSE):,} characters (raw)").click()
    page.get_by_text("HUGE-END").first.wait_for()  # every character, raw
    wait_idle(page)

    page.evaluate("document.activeElement.blur()")  # keys do nothing while the toggle has the focus
    time.sleep(REPEAT_GUARD_SECONDS + 0.1)
    page.keyboard.press("t")
    page.get_by_text(f"Pair {word_pair}", exact=True).wait_for()
    wait_idle(page)
    word_box = box_with(page, "a*a*a*")
    assert page.get_by_text(f"Showing the first {RENDER_LIMIT:,} of {len(HUGE_WORD):,} characters.").count() == 1
    assert word_box.locator("em").count() == 0  # shown literally, no emphasis
    assert "a*a*a*a*" in shown(word_box)
    screenshot(page, "huge-word")

    # The Review page shows both, cut the same way.
    admin, admin_token = store.add_annotator("huge-root", "admin")
    judge(store, word_pair, admin.id, "b")
    review = new_page()
    review.set_default_timeout(SLOW)
    sign_in(review, url, admin_token, "review")
    review.get_by_text("Single judgment", exact=True).click()
    review.get_by_text("Pair to review").wait_for()
    for pair_id, length in ((word_pair, len(HUGE_WORD)), (prose_pair, len(HUGE_PROSE))):
        review.get_by_test_id("stSelectbox").filter(has_text="Pair to review").locator("input").click()
        review.get_by_role("option", name=f"pair {pair_id}", exact=True).click()
        review.get_by_text(f"Show all {length:,} characters (raw)").wait_for()
        wait_idle(review)


# --- D: layout ----------------------------------------------------------------------------------------------------
LONG_PROMPT = "\n\n".join(f"Paragraph {i} of a long prompt, with context to read first. " * 6 for i in range(20))


def _in_view(page, locator) -> bool:
    box, height = locator.bounding_box(), page.viewport_size["height"]
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


@pytest.mark.parametrize("width,height", [(1366, 768), (390, 844)])
def test_the_choice_bar_stays_in_view(server, new_page, width, height):
    url, store = server
    long_a = "\n".join(f"Line {i} of a long answer A." for i in range(400))
    long_b = "\n".join(f"Line {i} of a long answer B." for i in range(300))
    alice, token = store.add_annotator(f"layout-alice-{width}")
    (warm_up,) = round_of(store, [(f"warm-up {width}", "x", "y")])  # alice has judged before: guidelines start closed
    judge(store, warm_up, alice.id, "a", seconds_spent=5.0)
    (pair_id,) = round_of(store, [(f"{LONG_PROMPT} ({width})", long_a, long_b)], overlap=2)
    page = new_page(width=width, height=height)
    sign_in(page, url, token)
    page.get_by_text("Line 399 of a long answer A.", exact=False).first.wait_for(state="attached")
    wait_idle(page)
    screenshot(page, f"layout-{width}")
    bar, a_better = page.locator(".st-key-choice-bar"), page.get_by_role("button", name=re.compile("^A better"))
    assert _in_view(page, bar) and _in_view(page, a_better)
    responses = [page.get_by_text(re.compile(f"^Response {side} ")).first.bounding_box() for side in "AB"]
    if width > 640:
        assert responses[0]["y"] < 0.6 * height  # a long prompt does not push the responses down the page
        assert responses[0]["y"] == responses[1]["y"]  # side by side
    else:
        boxes = [box_with(page, f"Line 0 of a long answer {s}.").bounding_box() for s in "AB"]
        order = sorted(boxes, key=lambda b: b["y"])
        assert order[0]["y"] + order[0]["height"] <= order[1]["y"]  # stacked

    page.evaluate("document.querySelector('[data-testid=stMain]').scrollTo(0, 1e9)")
    page.keyboard.press("e")  # expanded: the page is as long as the texts
    page.locator("[class*='st-key-ut-full-']").first.wait_for()
    wait_idle(page)
    page.evaluate("document.querySelector('[data-testid=stMain]').scrollTo(0, 5000)")
    page.wait_for_timeout(300)
    assert _in_view(page, bar) and _in_view(page, a_better)
    time.sleep(REPEAT_GUARD_SECONDS)
    a_better.click()  # usable where it is
    page.get_by_text(re.compile("Nothing left for you to label")).wait_for()
    assert [j["pair_id"] for j in store.judgments(annotator_id=alice.id)][-1] == pair_id


def test_the_admin_sidebar_leaves_a_phone_screen_to_the_page(server, new_page):
    url, store = server
    _, token = store.add_annotator("phone-root", "admin")
    page = new_page(width=390, height=844)
    sign_in(page, url, token, "browse")
    page.get_by_role("heading", name="Browse").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    box = sidebar.bounding_box()
    assert sidebar.get_attribute("aria-expanded") == "false" or box is None or box["x"] + box["width"] <= 0
    assert _in_view(page, page.get_by_role("heading", name="Browse"))


# --- C: nothing fetched from what a person typed ------------------------------------------------------------------
class _Listener(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        _Listener.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    """A tiny HTTP server on 127.0.0.1 that records every request: what the payloads point at."""
    _Listener.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Listener.hits
    httpd.shutdown()
    httpd.server_close()


def test_no_request_leaves_the_page_from_typed_text(server, new_page, listener):
    url, store = server
    bait, hits = listener
    evil = {
        "guidelines": f"Read this ![tracker]({bait}/guidelines.png) <img src={bait}/raw.png> "
                      f"[data](data:text/html,<script>alert(1)</script>) [js](javascript:alert(1)) GUIDE-END",
        "name": f"![n]({bait}/name.png)",
        "admin": f"![a]({bait}/admin.png)",
        "note": f"[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) "
                f"![s](data:image/svg+xml,<svg onload=alert(1)>) ![r]({bait}/note.png)",
        "rationale": f"![r]({bait}/rationale.png) [d](data:text/html,x)",
        "response": f"![i]({bait}/response.png) RESP-END",
    }
    (pair_id,) = round_of(store, [("Prompt with bait", evil["response"], "plain b")], overlap=2)
    annotator, token = store.add_annotator(evil["name"])
    admin, admin_token = store.add_annotator(evil["admin"], "admin")
    other = store.ensure_annotator("simulated-judge", "simulated")
    judge(store, pair_id, other.id, "a", rationale=evil["rationale"])
    second = store.ensure_annotator("simulated-judge-2", "simulated")
    judge(store, pair_id, second.id, "b")  # a disagreement, settled by the admin's note
    store.adjudicate(pair_id, admin.id, "a", evil["note"])

    editor = new_page()  # the admin writes the guidelines where admins do: the Label page's editor
    sign_in(editor, url, admin_token)
    editor.get_by_label("Edit the guidelines (markdown; admins only)").fill(evil["guidelines"])
    editor.get_by_role("button", name="Save guidelines").click()
    editor.get_by_text("GUIDE-END").first.wait_for()
    editor.context.close()
    visits = [(token, "", "GUIDE-END"), (admin_token, "review", "Include pairs that already have a final label"),
              (admin_token, "browse", "Search"),
              (admin_token, "annotators", "Manage"), (admin_token, "dashboard", "Activity"),
              (admin_token, "data", "Import")]
    origin = url.rstrip("/")
    for who, path, marker in visits:
        page = new_page()
        elsewhere = []
        page.on("request", lambda request, bucket=elsewhere: None if request.url.startswith(origin)
                else bucket.append(request.url))
        sign_in(page, url, who, path)
        page.get_by_text(marker).first.wait_for()
        if path == "review":  # the pair is settled: its note shows once settled pairs are listed
            page.get_by_text("Include pairs that already have a final label").click()
            page.get_by_text("Final label: a better").wait_for()
            page.get_by_text("RESP-END").first.wait_for()
        if path == "browse":  # pick the pair's row: it is shown in full below the table
            grid = page.get_by_test_id("stDataFrame").first.bounding_box()
            page.mouse.click(grid["x"] + 18, grid["y"] + 35 + 17)
            page.get_by_text("RESP-END").first.wait_for()
        if path == "data":  # a file name with a link in it, named back in the success message
            page.locator("input[type=file]").set_input_files(
                files=[{"name": "[d](javascript:alert(1)) ![f](http:x).jsonl", "mimeType": "application/json",
                        "buffer": b'{"prompt": "A typed prompt."}\n'}])
            page.get_by_role("button", name="Import").click()
            page.get_by_text("imported 1 prompts").wait_for()
        wait_idle(page)
        page.wait_for_timeout(500)
        screenshot(page, f"typed-{path or 'label'}")
        assert elsewhere == [], (path, elsewhere)
        # Nothing on the page could fetch or run anything: no media from elsewhere, no link to a data: or script URL
        # (bare http links in guidelines and model text stay links: following one takes a click).
        live = page.evaluate("""() => [...document.querySelectorAll('#root *')]
            .flatMap(e => ['src', 'href', 'xlink:href', 'data', 'action', 'srcset', 'poster']
                .map(name => [e.tagName.toLowerCase(), (e.getAttribute(name) || '').trim()]))
            .filter(([tag, v]) => /^(data|javascript|vbscript|file):/i.test(v)
                || (tag !== 'a' && /^(https?:)?\\/\\//i.test(v) && !v.startsWith(location.origin)))
            .map(([tag, v]) => tag + ' ' + v.slice(0, 80))""")
        assert live == [], (path, live)
        if path == "":  # a typed name is plain text: not even a link
            caption = page.get_by_test_id("stSidebar").get_by_text("Signed in as")
            assert caption.locator("a").count() == 0 and evil["name"] in shown(caption)
        page.context.close()
    assert hits == []


# --- E: export download -------------------------------------------------------------------------------------------
def test_export_downloads_a_zip_written_next_to_the_database(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(4, "download"), overlap=1)
    judges = [store.ensure_annotator(f"download-judge-{i}", "simulated") for i in range(4)]
    for pair_id, annotator in zip(pair_ids, judges):
        judge(store, pair_id, annotator.id, "a")
    _, token = store.add_annotator("download-root", "admin")
    page = new_page()
    page.set_default_timeout(SLOW)
    sign_in(page, url, token, "data")
    page.get_by_label("Scope", exact=True).wait_for()
    page.get_by_label("Name", exact=True).fill("ui-download")
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text(re.compile("Exported ui-download: .* rows?")).wait_for()
    wait_idle(page)
    screenshot(page, "export")
    [export] = [e for e in store.list_exports() if e["name"] == "ui-download"]
    assert Path(export["path"]) == store.path.parent / "exports" / "ui-download"  # next to the database
    assert not (REPO / "data" / "exports" / "ui-download").exists()  # not under the server's working directory

    with page.expect_download() as download:
        page.get_by_role("button", name="Download zip").click()
    assert download.value.suggested_filename == "ui-download.zip"
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    names = set(archive.namelist())
    assert {"ui-download/dataset_dict.json", "ui-download/README.md", "ui-download/train.parquet"} <= names
    rows = sum(pq.read_table(io.BytesIO(archive.read(f"ui-download/{split}.parquet"))).num_rows
               for split in ("train", "test") if f"ui-download/{split}.parquet" in names)
    assert rows == 4 == sum(export["counts"][s] for s in ("train", "test"))
    assert {r["pair_id"] for r in pq.read_table(io.BytesIO(archive.read("ui-download/train.parquet"))).to_pylist()} \
        <= set(pair_ids)


# --- G: focus, Tab, pace, guidelines ------------------------------------------------------------------------------
def guidelines_open(page) -> bool:
    details = page.get_by_test_id("stExpander").filter(has_text="Guidelines").locator("details")
    return details.get_attribute("open") is not None


def test_focus_tab_pace_and_first_visit_guidelines(server, new_page):
    url, store = server
    pair_ids = round_of(store, [(f"Small {i}", f"a{i}", f"b{i}") for i in range(5)], overlap=2)
    veteran, veteran_token = store.add_annotator("pace-veteran")
    for pair_id in pair_ids[:2]:
        judge(store, pair_id, veteran.id, "a", seconds_spent=10.0)
    _, newcomer_token = store.add_annotator("pace-newcomer")

    page = new_page()
    page.goto(url)
    page.get_by_label("Sign-in token", exact=True).wait_for()
    page.wait_for_function("document.activeElement && document.activeElement.getAttribute('aria-label') "
                           "=== 'Sign-in token'")  # typing goes straight into the token field
    page.keyboard.type(newcomer_token)
    page.keyboard.press("Enter")
    page.get_by_text("Sign-in token", exact=True).wait_for(state="detached")
    wait_idle(page)
    assert guidelines_open(page)  # on a first visit
    # The sign-in field goes when the script run ends; the focus then settles on the page's main area.
    page.wait_for_function("document.activeElement && document.activeElement.dataset.testid === 'stMain'")
    focused = []
    for _ in range(2):  # the rationale box is at most two Tab presses away (the first, here)
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.placeholder || document.activeElement.innerText"))
    assert any(f.startswith("Rationale") for f in focused), focused

    page.keyboard.press("Escape")
    page.evaluate("document.activeElement.blur()")
    time.sleep(REPEAT_GUARD_SECONDS + 0.1)
    page.keyboard.press("a")
    page.get_by_text(f"Pair {pair_ids[1]}", exact=True).wait_for()
    wait_idle(page)
    assert guidelines_open(page)  # left open for the rest of the visit
    next_visit = new_page()
    sign_in(next_visit, url, newcomer_token)
    next_visit.get_by_text(f"Pair {pair_ids[1]}", exact=True).wait_for()
    assert not guidelines_open(next_visit)  # closed on the next

    veteran_page = new_page()
    sign_in(veteran_page, url, veteran_token)
    assert not guidelines_open(veteran_page)
    # 10 s a judgment is 360 an hour; the round needs 10 - 3 = 7 more: 70 s at that pace
    progress = veteran_page.get_by_text(re.compile("your pace 360 per hour, about 1 min for the 7 left"))
    progress.wait_for()  # the progress bar is drawn after the pair (label.py fills its slot last)
    assert progress.count() == 1
