"""The real-browser harness: `streamlit run streamlit_app.py` on 127.0.0.1 and Debian chromium driven by Playwright.

A browser test module loads these fixtures with

    pytest_plugins = ["tests.browser"]
    pytestmark = pytest.mark.browser

and gets one server per module (it takes seconds to start) on a free port with its own temporary database, one
chromium per module, and a fresh browser context per page. Needs Debian's chromium on PATH (`make test` installs it
where it can, tests/install_chromium.sh); without it the browser tests fail, unless PREFLOOP_SKIP_BROWSER_TESTS=1 skips
them (the summary then names the variable).

PYTEST_DONT_REWRITE: test modules import the helpers below before pytest loads this module as a plugin, which would
otherwise warn that it is too late to rewrite its asserts (it has none).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from store import Store

CHROMIUM = shutil.which("chromium")
SKIP_BROWSER_TESTS = "PREFLOOP_SKIP_BROWSER_TESTS"  # set to 1: skip the browser tests (e.g. no chromium here)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = os.environ.get("PREFLOOP_SCREENSHOTS")  # a folder: save a screenshot of each page the tests check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run streamlit_app.py` on a free port and a fresh database; yields (base URL, Store)."""
    need_chromium()
    folder = tmp_path_factory.mktemp("browser")
    db = folder / "ui.duckdb"
    store = Store(db)
    port = _free_port()
    log = open(folder / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=REPO, env={**os.environ, "PREFLOOP_DB": str(db)}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"streamlit did not come up: {(folder / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.2)
    yield url, store
    process.terminate()
    process.wait(timeout=10)
    log.close()


def need_chromium() -> None:
    """Skip when the user opted out, fail when chromium is missing: a green run must not hide the browser tests."""
    if os.environ.get(SKIP_BROWSER_TESTS, "0") != "0":
        pytest.skip(f"browser tests skipped by {SKIP_BROWSER_TESTS}={os.environ[SKIP_BROWSER_TESTS]}")
    if CHROMIUM is None:
        pytest.fail(f"chromium is not on PATH: `make test` installs it (as root, with apt-get), or apt-get install "
                    f"chromium; {SKIP_BROWSER_TESTS}=1 skips the browser tests", pytrace=False)


@pytest.fixture(scope="module")
def browser():
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser):
    """A page in its own browser context (own cookies and session), with a dialog recorder; closed afterwards.

    `new_page(height=3000)` gives a tall viewport: Streamlit scrolls inside its own container, so a screenshot shows
    only what the viewport holds. `new_page(width=390, height=844)`: a phone's."""
    contexts = []

    def make(height: int = 1000, width: int = 1400):
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.dialogs = []  # from any page of the context, popups included

        def on_dialog(dialog):
            page.dialogs.append(dialog.message)
            dialog.dismiss()

        context.on("dialog", on_dialog)
        return page

    yield make
    for context in contexts:
        context.close()


def wait_idle(page) -> None:
    """Until the script run the last action started has finished (Streamlit shows a status widget meanwhile)."""
    page.wait_for_timeout(150)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")


def sign_in(page, url: str, token: str, path: str = "") -> None:
    """Sign in through the form, and wait until the browser holds the session cookie (so the next page load, tab or
    typed link is signed in too)."""
    page.goto(f"{url}/{path}")
    page.get_by_label("Sign-in token", exact=True).fill(token)
    page.keyboard.press("Enter")
    page.wait_for_function("![...document.querySelectorAll('p')].some(p => p.innerText === 'Sign-in token')")
    deadline = time.monotonic() + 30
    while not any(c["name"] == "prefloop_session" for c in page.context.cookies()):
        assert time.monotonic() < deadline, "signed in, but the session cookie never came"
        time.sleep(0.05)
    wait_idle(page)


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))
