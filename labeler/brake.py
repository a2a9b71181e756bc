"""A brake on guessing sign-in tokens: a growing delay after a few wrong tokens, then a short lockout; per client and
for the whole server at once (many clients guessing together).

    brake = SignInBrake()
    if (wait := brake.wait(client)) > 0: refuse ("try again in {wait} s"); brake.refused(client)
    elif token is right: brake.succeeded(client)
    else: brake.failed(client)

A client is the address the request came from (`st.context.ip_address`; "localhost" for 127.0.0.1 and ::1). Behind a
reverse proxy every request comes from the proxy, so the per-client brake acts as a second global one there.

Every wrong token counts, and so does every try made while a delay or lockout is running (a script hammering the form
locks itself out; a person who waits as told does not). The counts cover a sliding window: mistakes older than
`window_seconds` are forgotten. Each wrong token and each lockout is logged on the `prefloop.signin` logger (to the
server's stderr) naming the client and the counts, never the token. The state lives in the server process (all
sessions of one `streamlit run` share it); a restart clears it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger("prefloop.signin")
if not log.handlers:  # Streamlit configures only its own loggers; without this, lines would lack the time
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@dataclass(frozen=True)
class Limits:
    free: int  # wrong tokens allowed in the window before any delay
    lockout_after: int  # wrong tokens in the window that lock out
    lockout_seconds: float  # how long a lockout lasts
    first_delay: float = 1.0  # seconds to wait after the first wrong token past `free`; doubles with each one after
    longest_delay: float = 30.0


CLIENT = Limits(free=3, lockout_after=10, lockout_seconds=300)
EVERYONE = Limits(free=30, lockout_after=100, lockout_seconds=120)


class _Counter:
    """Wrong tokens within the window, and until when the next try must wait."""

    def __init__(self):
        self.failures: deque[float] = deque()
        self.blocked_until = 0.0

    def count(self, now: float, window: float) -> int:
        while self.failures and self.failures[0] <= now - window:
            self.failures.popleft()
        return len(self.failures)


class SignInBrake:
    def __init__(self, client: Limits = CLIENT, everyone: Limits = EVERYONE, window_seconds: float = 900,
                 clock=time.monotonic):
        self.limits = {"client": client, "everyone": everyone}
        self.window = window_seconds
        self.clock = clock
        self.mutex = threading.Lock()
        self.clients: dict[str, _Counter] = {}
        self.everyone = _Counter()

    def wait(self, client: str) -> float:
        """Seconds before `client` may try a token (0: now)."""
        now = self.clock()
        with self.mutex:
            counters = [self.everyone] + ([self.clients[client]] if client in self.clients else [])
            return max(0.0, *(c.blocked_until - now for c in counters))

    def failed(self, client: str) -> None:
        """A wrong token from `client`."""
        self._count(client, "wrong token")

    def refused(self, client: str) -> None:
        """A try from `client` while it had to wait (refused unchecked): counted like a wrong token."""
        self._count(client, "try during a wait")

    def succeeded(self, client: str) -> None:
        """A right token: the client's own count starts again (the global one does not)."""
        with self.mutex:
            self.clients.pop(client, None)

    def _count(self, client: str, what: str) -> None:
        now = self.clock()
        with self.mutex:
            if len(self.clients) > 10_000:  # a flood of addresses: keep only those still counting
                self.clients = {k: c for k, c in self.clients.items() if c.count(now, self.window)}
            counter = self.clients.setdefault(client, _Counter())
            waits = []
            for scope, c in (("client", counter), ("everyone", self.everyone)):
                c.failures.append(now)
                n, limits = c.count(now, self.window), self.limits[scope]
                if n >= limits.lockout_after:
                    wait = limits.lockout_seconds
                elif n > limits.free:
                    wait = min(limits.first_delay * 2 ** (n - limits.free - 1), limits.longest_delay)
                else:
                    wait = 0.0
                c.blocked_until = max(c.blocked_until, now + wait)
                waits.append((scope, n, wait, n >= limits.lockout_after))
        (_, mine, my_wait, my_lock), (_, all_, all_wait, all_lock) = waits
        level = logging.WARNING if my_lock or all_lock else logging.INFO
        log.log(level, "sign-in: %s from client %s (%d from it, %d from everyone in the last %.0f min); %s",
                what, client, mine, all_, self.window / 60,
                _consequence(max(my_wait, all_wait), my_lock, all_lock))


def _consequence(wait: float, client_locked: bool, everyone_locked: bool) -> str:
    if everyone_locked:
        return f"sign-in locked for everyone for {wait:.0f} s"
    if client_locked:
        return f"client locked out for {wait:.0f} s"
    return f"next try allowed in {wait:.0f} s" if wait else "no delay yet"


def client_of_request() -> str:
    """The address of the browser this Streamlit session talks to."""
    import streamlit as st

    address = st.context.ip_address
    return address if isinstance(address, str) and address else "localhost"  # None for 127.0.0.1 and ::1
