"""The brake on wrong sign-in tokens: its rules on a fake clock, then real sign-in requests through chromium against
`streamlit run` on 127.0.0.1, with the server's log read back.

    .venv/bin/python -m pytest tests/test_signin_brake.py -q
"""

from __future__ import annotations

import re
import time

import pytest

from labeler.brake import Limits, SignInBrake
from tests.browser import wait_idle

pytest_plugins = ["tests.browser"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def brake(**overrides) -> tuple[SignInBrake, Clock]:
    clock = Clock()
    limits = dict(client=Limits(free=3, lockout_after=8, lockout_seconds=300),
                  everyone=Limits(free=5, lockout_after=12, lockout_seconds=120), window_seconds=900, clock=clock)
    return SignInBrake(**(limits | overrides)), clock


def test_growing_delay_then_lockout_per_client():
    b, clock = brake()
    for _ in range(3):
        b.failed("10.0.0.1")
        assert b.wait("10.0.0.1") == 0  # three mistakes are free
    waits = []
    for _ in range(4):
        b.failed("10.0.0.1")
        waits.append(b.wait("10.0.0.1"))
        clock.now += waits[-1]  # a patient person waits as told
    assert waits == [1, 2, 4, 8]
    assert b.wait("10.0.0.2") == 0  # others are not slowed by this client
    b.refused("10.0.0.1")  # the eighth try, made during no wait at all, still counts: lockout
    assert b.wait("10.0.0.1") == 300
    clock.now += 299
    assert b.wait("10.0.0.1") == pytest.approx(1)
    clock.now += 900  # the window forgets old mistakes
    b.failed("10.0.0.1")
    assert b.wait("10.0.0.1") == 0


def test_tries_during_a_wait_count_and_a_right_token_resets_the_client():
    b, clock = brake()
    for _ in range(4):
        b.failed("10.0.0.1")
    assert b.wait("10.0.0.1") == 1
    for _ in range(4):  # hammering during the delay: locked out without ever checking a token
        b.refused("10.0.0.1")
    assert b.wait("10.0.0.1") == 300
    b2, _ = brake()
    for _ in range(3):
        b2.failed("10.0.0.3")
    b2.succeeded("10.0.0.3")
    b2.failed("10.0.0.3")
    assert b2.wait("10.0.0.3") == 0


def test_many_clients_together_slow_and_lock_everyone():
    b, clock = brake()
    for i in range(5):
        b.failed(f"10.1.0.{i}")  # one mistake each: no client is slowed, but everyone has 5
    assert b.wait("10.9.9.9") == 0
    b.failed("10.1.0.5")
    assert b.wait("10.9.9.9") == 1  # the sixth from anywhere slows every client
    clock.now += 1
    for i in range(6):
        b.failed(f"10.2.0.{i}")
    assert b.wait("10.9.9.9") == 120  # twelve in the window: a short lockout for everyone
    clock.now += 121
    assert b.wait("10.9.9.9") == 0


def test_the_log_names_the_client_never_the_token(caplog):
    b, _ = brake()
    with caplog.at_level("INFO", logger="prefloop.signin"):
        for _ in range(8):
            b.failed("192.0.2.7")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 8 and all("client 192.0.2.7" in line for line in lines)
    assert "next try allowed in 1 s" in lines[3] and "client locked out for 300 s" in lines[-1]
    assert caplog.records[-1].levelname == "WARNING"


@pytest.mark.browser
def test_wrong_tokens_through_the_sign_in_form_are_slowed_then_locked_out(server, new_page):
    url, store = server
    _, token = store.add_annotator("brake-alice")
    log = store.path.parent / "streamlit.log"  # the server's stdout and stderr (tests/browser.py)

    def brake_lines() -> list[str]:
        return [line for line in log.read_text().splitlines() if "prefloop.signin" in line]

    page = new_page()
    page.goto(url)
    field = page.get_by_label("Sign-in token", exact=True)

    def attempt(value: str) -> str:
        """Submit a token; once the server has logged the attempt, the message the page shows for it."""
        counted = len(brake_lines())
        field.fill(value)
        page.keyboard.press("Enter")
        deadline = time.monotonic() + 30
        while len(brake_lines()) == counted and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_idle(page)
        return page.locator("[data-testid=stAlert]").last.inner_text().splitlines()[-1]  # after the icon's name

    wrong = [f"wrong-token-{i}-x7Qz" for i in range(10)]
    shown = [attempt(value) for value in wrong]
    assert all(m.startswith("That token is not valid") for m in shown[:4])  # three free, the fourth starts a delay
    # Later tries, wrong or made during a delay (then refused unchecked), all count: whichever each one was on a
    # loaded machine, the tenth locks this client out for 300 s.
    assert all(m.startswith(("That token is not valid", "Too many wrong tokens")) for m in shown[4:])
    # The right token, while locked out: not even checked.
    assert re.fullmatch(r"Too many wrong tokens\. Wait (2\d\d|300) s before trying again\.", attempt(token))
    assert page.get_by_text("Response A", exact=True).count() == 0 and field.count() == 1

    lines = brake_lines()
    assert len(lines) == 11 and all("from client localhost" in line for line in lines)
    assert "next try allowed in 1 s" in lines[3] and "client locked out for 300 s" in lines[9]
    text = log.read_text()
    for secret in [token, *wrong]:
        assert secret not in text
