"""Sessions and the labeling keys in a real browser: Debian chromium driven by Playwright against `streamlit run`.

    .venv/bin/python -m pytest tests/test_sessions_browser.py -q      # needs /usr/bin/chromium

A reload, a new tab and a typed link keep the session (an HttpOnly, SameSite=Strict cookie); signing out and a
disabled account end it; twelve presses of B 100 ms apart (and a held key) record one judgment; undo brings a skipped
pair back; closing the tab gives its pair back at once, and the heartbeat route keeps a lease only for a live session.
"""

from __future__ import annotations

import time

import pytest

from labeler.labeling import REPEAT_GUARD_SECONDS
from labeler.routes import COOKIE, LEASE_SECONDS
from tests.browser import screenshot, sign_in, wait_idle
from tests.labeling_data import make_round, simple_items
from tests.test_labeler_browser import pair_on_screen, press_and_wait
from tests.test_store import select

pytest_plugins = ["tests.browser"]
pytestmark = pytest.mark.browser


def session_cookie(context, timeout: float = 15) -> dict:
    """The session cookie once the page has fetched it (right after a sign-in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in context.cookies() if c["name"] == COOKIE]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {COOKIE} cookie after {timeout} s: {context.cookies()}")


def wait_until(condition, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


def signed_out(page) -> None:
    page.get_by_label("Sign-in token", exact=True).wait_for()
    wait_idle(page)  # the sign-in field is drawn before the run ends and Streamlit removes the previous screen
    assert page.get_by_text("Response A", exact=True).count() == 0


def test_reload_new_tab_and_typed_link_keep_the_session(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(3, "persist"))
    _, token = store.add_annotator("persist-root", "admin")
    page = new_page()
    sign_in(page, url, token)
    first = pair_on_screen(page)
    assert first == pair_ids[0]
    cookie = session_cookie(page.context)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["value"] != token and token not in page.url
    assert COOKIE not in page.evaluate("document.cookie")  # out of reach of any script on the page

    page.reload()
    page.get_by_text(f"Pair {first}", exact=True).wait_for()  # no sign-in form: the same pair, still leased
    assert page.get_by_label("Sign-in token", exact=True).count() == 0
    tab = page.context.new_page()
    tab.goto(url)
    tab.get_by_text(f"Pair {first}", exact=True).wait_for()
    typed = page.context.new_page()
    typed.goto(f"{url}/dashboard")
    typed.get_by_role("heading", name="Dashboard").wait_for()
    wait_idle(typed)
    assert typed.get_by_label("Sign-in token", exact=True).count() == 0
    screenshot(typed, "session-typed-link")


def test_sign_out_ends_the_session_and_its_cookie(server, new_page, browser):
    url, store = server
    make_round(store, simple_items(2, "signout"))
    _, token = store.add_annotator("signout-root", "admin")
    page = new_page()
    sign_in(page, url, token)
    cookie = session_cookie(page.context)
    page.get_by_role("button", name="Sign out").click()
    signed_out(page)
    wait_until(lambda: COOKIE not in {c["name"] for c in page.context.cookies()}, what="the cookie deleted")
    page.reload()
    signed_out(page)

    replay = browser.new_context()  # the old cookie, replayed by someone who copied it: ended server-side
    try:
        replay.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path", "httpOnly", "sameSite")}])
        stolen = replay.new_page()
        stolen.goto(url)
        signed_out(stolen)
    finally:
        replay.close()


def test_a_disabled_annotator_is_signed_out_at_the_next_press(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(2, "disabled"))
    alice, token = store.add_annotator("disabled-alice")
    page = new_page()
    sign_in(page, url, token)
    session_cookie(page.context)
    store.set_annotator_disabled("disabled-alice", True)
    time.sleep(REPEAT_GUARD_SECONDS + 0.1)
    page.keyboard.press("a")
    page.get_by_text("'disabled-alice' is disabled").wait_for()
    signed_out(page)
    assert store.judgments(annotator_id=alice.id) == []
    page.reload()
    signed_out(page)  # the cookie names an ended session


def test_twelve_presses_of_b_and_a_held_key_record_one_judgment_each(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(4, "burst"))
    alice, token = store.add_annotator("burst-alice")
    page = new_page()
    sign_in(page, url, token)
    assert pair_on_screen(page) == pair_ids[0]
    time.sleep(REPEAT_GUARD_SECONDS + 0.1)
    for _ in range(12):
        page.keyboard.press("b")
        page.wait_for_timeout(100)
    page.get_by_text(f"Pair {pair_ids[1]}", exact=True).wait_for()
    page.wait_for_timeout(1500)  # anything still in flight lands
    wait_idle(page)
    assert [r["pair_id"] for r in store.judgments(annotator_id=alice.id)] == [pair_ids[0]]
    assert pair_on_screen(page) == pair_ids[1]

    time.sleep(REPEAT_GUARD_SECONDS + 0.1)
    page.keyboard.down("t")  # held: the browser repeats the key
    for _ in range(15):
        page.keyboard.down("t")
        page.wait_for_timeout(50)
    page.keyboard.up("t")
    page.get_by_text(f"Pair {pair_ids[2]}", exact=True).wait_for()
    page.wait_for_timeout(1500)
    wait_idle(page)
    assert [(r["pair_id"], r["choice"]) for r in store.judgments(annotator_id=alice.id)][1:] == [(pair_ids[1], "tie")]

    # A deliberate press on the next pair still counts.
    assert press_and_wait(page, "x", pair_ids[2]) == pair_ids[3]
    assert [r["pair_id"] for r in store.judgments(annotator_id=alice.id)] == pair_ids[:3]


def test_undo_brings_a_skipped_pair_back(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(3, "unskip"))
    alice, token = store.add_annotator("unskip-alice")
    page = new_page()
    sign_in(page, url, token)
    assert press_and_wait(page, "s", pair_ids[0]) == pair_ids[1]
    time.sleep(REPEAT_GUARD_SECONDS)
    page.keyboard.press("u")
    page.get_by_text(f"Pair {pair_ids[0]}", exact=True).wait_for()
    wait_idle(page)
    assert select(store, "SELECT count(*) AS n FROM skips WHERE annotator_id = ?", [alice.id])[0]["n"] == 0
    assert press_and_wait(page, "t", pair_ids[0]) == pair_ids[1]
    assert [(r["pair_id"], r["choice"]) for r in store.judgments(annotator_id=alice.id)] == [(pair_ids[0], "tie")]


def test_closing_the_tab_gives_its_pair_back(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(2, "closing"))
    alice, token = store.add_annotator("closing-alice")
    bob, _ = store.add_annotator("closing-bob")
    page = new_page()
    sign_in(page, url, token)
    session_cookie(page.context)
    assert pair_on_screen(page) == pair_ids[0]
    leases = "SELECT pair_id FROM leases WHERE annotator_id = ?"
    assert select(store, leases, [alice.id]) == [{"pair_id": pair_ids[0]}]
    page.close(run_before_unload=True)
    wait_until(lambda: select(store, leases, [alice.id]) == [], what="the lease given back")
    assert store.next_pair(bob.id)["id"] == pair_ids[0]


def test_the_heartbeat_route_holds_a_lease_only_for_a_live_session(server, new_page, browser):
    url, store = server
    _, pair_ids = make_round(store, simple_items(2, "heartbeat"))
    alice, token = store.add_annotator("heartbeat-alice")
    page = new_page()
    sign_in(page, url, token)
    session_cookie(page.context)
    pair = pair_on_screen(page)
    expiry = "SELECT expires_at FROM leases WHERE annotator_id = ? AND pair_id = ?"
    before = select(store, expiry, [alice.id, pair])[0]["expires_at"]
    time.sleep(1.1)
    reply = page.request.post(f"{url}/prefloop/lease/hold", data=str(pair))  # the page's cookie goes along
    assert reply.ok and reply.json() == {"held": True}
    after = select(store, expiry, [alice.id, pair])[0]["expires_at"]
    assert after > before and (after - before).total_seconds() < LEASE_SECONDS

    outsider = browser.new_context()
    try:
        assert outsider.request.post(f"{url}/prefloop/lease/hold", data=str(pair)).status == 403  # no cookie
        assert outsider.request.post(f"{url}/prefloop/session", data="made-up-grant").status == 403
    finally:
        outsider.close()
    store.reset_token("heartbeat-alice")  # ends the session: the cookie holds nothing any more
    assert page.request.post(f"{url}/prefloop/lease/hold", data=str(pair)).status == 403


def test_a_stale_tab_signing_out_leaves_the_newer_session_alone(server, new_page):
    url, store = server
    _, pair_ids = make_round(store, simple_items(3, "stale"))
    alice, token = store.add_annotator("stale-alice")
    old_tab = new_page()
    sign_in(old_tab, url, token)
    new_token = store.reset_token("stale-alice")  # ends the session of the old tab
    new_tab = old_tab.context.new_page()
    sign_in(new_tab, url, new_token)  # the same browser signs in again: a new session, a new cookie
    cookie = session_cookie(new_tab.context)
    time.sleep(REPEAT_GUARD_SECONDS)
    old_tab.keyboard.press("a")  # refused: the old tab signs out...
    signed_out(old_tab)
    old_tab.wait_for_timeout(1000)  # (its request to drop the cookie has come and gone)
    assert session_cookie(new_tab.context)["value"] == cookie["value"]  # ...without touching the new session
    new_tab.reload()
    new_tab.get_by_text("Response A", exact=True).wait_for()
    assert store.judgments(annotator_id=alice.id) == []


def test_the_page_holds_its_pair_while_used_and_lets_it_go_when_idle(server, new_page):
    """The browser's heartbeat, on a fake clock: it renews the lease every HEARTBEAT_MS while there is input, and
    stops after IDLE_MS without any, so the lease then lapses (LEASE_SECONDS later) and the pair goes back."""
    from labeler.browser import HEARTBEAT_MS, IDLE_MS

    url, store = server
    make_round(store, simple_items(2, "idle"))
    alice, token = store.add_annotator("idle-alice")
    page = new_page()
    page.clock.install()
    sign_in(page, url, token)
    pair = pair_on_screen(page)
    expiry = "SELECT expires_at FROM leases WHERE annotator_id = ? AND pair_id = ?"

    def expires() -> object:
        return select(store, expiry, [alice.id, pair])[0]["expires_at"]

    def beat_after(milliseconds: int) -> None:
        page.clock.run_for(milliseconds)
        page.wait_for_timeout(1500)  # the heartbeat's request reaches the server

    first = expires()
    page.mouse.move(200, 200)
    beat_after(HEARTBEAT_MS + 1000)
    held = expires()
    assert held > first  # renewed while in use
    beat_after(IDLE_MS)  # no input for IDLE_MS: the beats in between still renew, the last ones stop
    idle = expires()
    beat_after(2 * HEARTBEAT_MS)
    assert expires() == idle  # idle: no renewal any more
    page.mouse.move(300, 300)
    beat_after(HEARTBEAT_MS + 1000)
    assert expires() > idle  # back: renewed again
