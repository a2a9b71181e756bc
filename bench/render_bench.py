"""Rendering cost of huge responses: seconds until a pair holding one appears on the Label and Review pages.

    .venv/bin/python bench/render_bench.py                          # every case, Label and Review
    .venv/bin/python bench/render_bench.py --pages label,review,show-all
    .venv/bin/python bench/render_bench.py --cases word-200k,prose-1mb --pages label --out /tmp/render.json

What is measured, in a real browser (Debian chromium through Playwright, viewport 1366x768) against `streamlit run
streamlit_app.py` on 127.0.0.1 with a throwaway database:
  label   an annotator judges a short pair with a key press; the clock runs from the press until the next pair, the
          one holding the huge response, is on screen (its "Pair N" caption shown, Streamlit's running indicator gone,
          two animation frames painted). The browser's main thread is busy while it lays the text out, so the wait
          ends only once it has.
  review  two simulated judges disagree on both pairs; an admin on the Review page picks the short pair, then the
          huge one in "Pair to review"; the clock runs from that pick until the huge response's first line is on
          screen and the page is idle.
  show-all  on the Label page, from clicking "Show all ... characters (raw)" under the huge response (a text over
          20,000 characters is shown cut) until its last line is on screen: what asking for every character costs.
Each case is a pair whose response a is the huge text and response b a short one (cases in CASES). Goal: every case
under 2 s on both pages. A case that does not appear within --timeout seconds is reported as "> timeout".
Prints a markdown table; --out writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from store import Candidates, Judgment, PromptIn, ResponseIn, Store  # noqa: E402
from tests.browser import sign_in  # noqa: E402  (the test harness's: token field, Enter, wait)

CHROMIUM = "/usr/bin/chromium"
MB = 1_000_000


def _prose(size: int) -> str:
    line = "The model wrote this line of ordinary prose, one of very many in a long answer.\n"
    return (line * (size // len(line) + 1))[:size]


def _markdown(size: int) -> str:
    block = ("## Step heading\n\nSome **bold** and _emphasis_ text with `code` and a price of $5 and $x^2$.\n\n"
             "- item one\n- item two with [a link](http://example.invalid/x)\n\n```python\nprint('hello')\n```\n\n")
    return (block * (size // len(block) + 1))[:size]


# name: (what it is, the text). Each text starts with a line the timings wait for, "Bench start <name>", and ends
# with "Bench end <name>".
CASES = {
    "word-200k": ("one 200,000-character word (letters)", "x" * 200_000),
    "word-200k-emphasis": ("one 200,000-character word of emphasis delimiters (a*a*a*...)", "a*" * 100_000),
    "prose-1mb": ("1 MB of prose lines", _prose(MB)),
    "line-1mb": ("1 MB on one line (words)", ("word " * (MB // 5))[:MB]),
    "markdown-1mb": ("1 MB of markdown (headings, lists, code, links, dollars)", _markdown(MB)),
}
CASES = {name: (what, f"Bench start {name}\n\n{text}\n\nBench end {name}") for name, (what, text) in CASES.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=REPO, env={**os.environ, "PREFLOOP_DB": str(db)}, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"streamlit did not come up: {log.read_text()[-2000:]}")


def make_case_round(store: Store, name: str, text: str) -> tuple[int, int]:
    """A new (latest) round with a short pair, then the pair holding `text`; returns (short pair id, huge pair id)."""
    store.add_prompts([PromptIn([{"role": "user", "content": f"{name}: {kind} prompt"}], "render-bench")
                       for kind in ("short", "huge")])
    by_text = {p["messages"][0]["content"]: p["id"] for p in store.list_prompts()}
    checkpoint = store.register_checkpoint("base", "render-bench")
    round_id = store.new_round(checkpoint, overlap_target=4)
    items = []
    for kind, response in (("short", f"{name}: a short answer"), ("huge", text)):
        prompt_id = by_text[f"{name}: {kind} prompt"]
        items.append(Candidates(prompt_id, [ResponseIn(prompt_id, checkpoint, response, {}, None, None, "stop"),
                                            ResponseIn(prompt_id, checkpoint, f"{name}: the other {kind} answer",
                                                       {}, None, None, "stop")], [(0, 1)]))
    summary = store.add_candidates(round_id, "samples", items)
    short, huge = sorted(summary.pair_ids)
    return short, huge


def _idle(page) -> None:
    page.wait_for_timeout(100)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")
    page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def new_page(browser, timeout: float):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.set_default_timeout(timeout * 1000)
    return page


def time_label(browser, timeout: float, url: str, store: Store, name: str, short: int, huge: int) -> float:
    _, token = store.add_annotator(f"bench-label-{name}")
    page = new_page(browser, timeout)
    sign_in(page, url, token)
    page.get_by_text(f"Pair {short}", exact=True).wait_for()
    time.sleep(0.7)  # presses right after a pair appears are ignored as double clicks
    start = time.monotonic()
    page.keyboard.press("a")
    page.get_by_text(f"Pair {huge}", exact=True).wait_for()
    _idle(page)
    return time.monotonic() - start


def time_show_all(browser, timeout: float, url: str, store: Store, name: str, short: int, huge: int,
                  length: int) -> float:
    _, token = store.add_annotator(f"bench-all-{name}")
    page = new_page(browser, timeout)
    sign_in(page, url, token)
    page.get_by_text(f"Pair {short}", exact=True).wait_for()
    time.sleep(0.7)
    page.keyboard.press("a")
    page.get_by_text(f"Pair {huge}", exact=True).wait_for()
    _idle(page)
    start = time.monotonic()
    page.get_by_text(f"Show all {length:,} characters (raw)").click()
    page.get_by_text(f"Bench end {name}").first.wait_for()
    _idle(page)
    return time.monotonic() - start


def time_review(browser, timeout: float, url: str, store: Store, name: str, short: int, huge: int) -> float:
    _, token = store.add_annotator(f"bench-review-{name}", "admin")
    page = new_page(browser, timeout)
    sign_in(page, url, token, "review")
    for pair_id in (short, huge):  # the short pair first, whichever one the page shows at first
        page.get_by_test_id("stSelectbox").filter(has_text="Pair to review").locator("input").click()
        option = page.get_by_role("option", name=f"pair {pair_id}", exact=True)
        option.wait_for()
        start = time.monotonic()
        option.click()
        _idle(page)
    page.get_by_text(f"Bench start {name}", exact=True).first.wait_for()
    _idle(page)
    return time.monotonic() - start


def judge_as_disagreements(store: Store, name: str, pair_ids: tuple[int, int]) -> None:
    """Two simulated judges disagree on both pairs (each leased first), so every version of Review lists them."""
    for judge, choice in (("one", "a"), ("two", "b")):
        annotator = store.ensure_annotator(f"bench-{name}-{judge}", "simulated")
        for pair_id in pair_ids:
            store.hold_pair(annotator.id, pair_id)
            store.submit_judgment(Judgment(pair_id, annotator.id, choice, shown_left="a"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--pages", default="label,review", help="label, review, show-all (comma-separated)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for one case on one page")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    names, pages = args.cases.split(","), args.pages.split(",")
    unknown = [n for n in names if n not in CASES] + [p for p in pages if p not in ("label", "review", "show-all")]
    if unknown:
        parser.error(f"unknown case or page: {', '.join(unknown)}")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    results = []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        store = Store(Path(folder) / "render.duckdb")
        server, url = start_server(store.path, Path(folder) / "streamlit.log")
        try:
            for name in names:
                description, text = CASES[name]
                short, huge = make_case_round(store, name, text)
                row = {"case": name, "what": description, "chars": len(text)}
                for page_name in pages:
                    # A fresh browser each time: a page still busy laying out a previous case would slow this one.
                    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                         args=["--no-sandbox", "--disable-gpu"])
                    try:
                        if page_name == "label":
                            seconds = time_label(browser, args.timeout, url, store, name, short, huge)
                        elif page_name == "show-all":
                            seconds = time_show_all(browser, args.timeout, url, store, name, short, huge, len(text))
                        else:
                            judge_as_disagreements(store, name, (short, huge))
                            seconds = time_review(browser, args.timeout, url, store, name, short, huge)
                        row[f"{page_name}_s"] = round(seconds, 2)
                    except PlaywrightTimeout:
                        row[f"{page_name}_s"] = None
                    finally:
                        browser.close()
                    print(f"{name} {page_name}: {row[f'{page_name}_s'] or f'> {args.timeout:.0f}'} s", flush=True)
                results.append(row)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"\n| case | characters | {' | '.join(f'{p} (s)' for p in pages)} |")
    print("|---|---:|" + "---:|" * len(pages))
    for row in results:
        shown = [f"{row[f'{p}_s']:.2f}" if row[f"{p}_s"] is not None else f"> {args.timeout:.0f}" for p in pages]
        print(f"| {row['what']} | {row['chars']:,} | {' | '.join(shown)} |")
    if args.out:
        args.out.write_text(json.dumps({
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.node(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "timeout_s": args.timeout, "results": results,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
