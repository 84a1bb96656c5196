"""Sending messages through Apprise, within one deadline for everything.

Apprise's own timeouts are per request (and per retry); a service that accepts the connection
and never answers, or a DNS lookup that hangs, must still not hold the crawl's end. Each
destination gets a daemon thread that tries a few times while the deadline allows; the caller
joins them all against that one deadline and counts a thread still running as a failure. A
daemon thread left behind never keeps the process from exiting.

Apprise logs the URLs it loads and posts to (hosts, paths, sometimes keys), and so does
urllib3 under it: their loggers are silenced here, and failures are logged by the caller by
service name only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Final

#: Tries per destination, deadline permitting, and the pause before the second one (doubled
#: each time).
ATTEMPTS: Final = 3
BACKOFF: Final = 0.25
#: Apprise and the HTTP client under it (urllib3 logs every request's path at DEBUG): nothing
#: else in the crawler uses them.
QUIET_LOGGERS: Final = ("apprise", "requests", "urllib3", "requests_oauthlib", "oauthlib")


def apprise_module() -> ModuleType:
    """Apprise, imported on first use (alerts configured), with its logging silenced."""
    import apprise  # noqa: PLC0415 - an optional cost: only when alerts are configured

    for name in QUIET_LOGGERS:
        quiet = logging.getLogger(name)
        if not quiet.handlers:
            quiet.addHandler(logging.NullHandler())  # not Python's last-resort stderr handler
        quiet.propagate = False
    return apprise


def _attempts(message: tuple[str, str, str], deadline: float, done: list[bool],
              index: int) -> None:
    url, title, body = message
    apprise = apprise_module()
    pause = BACKOFF
    for attempt in range(ATTEMPTS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if plugin is None:
            return
        # Each request within what is left; the join below enforces it whatever happens.
        plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, remaining)
        plugin.socket_read_timeout = min(plugin.socket_read_timeout, remaining)
        # A plugin's exception is a failed attempt, nothing more.
        with contextlib.suppress(Exception):
            if plugin.notify(body=body, title=title):
                done[index] = True
                return
        if attempt + 1 < ATTEMPTS:
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause *= 2


def send(messages: Sequence[tuple[str, str, str]], timeout: float) -> list[bool]:
    """Send each ``(url, title, body)``, all at once; whether each was delivered in time.

    Blocking (call it from a thread in async code); returns within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    done = [False] * len(messages)
    threads = [threading.Thread(target=_attempts, args=(message, deadline, done, index),
                                name="tmapi-alert", daemon=True)
               for index, message in enumerate(messages)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # A copy: a thread that succeeds after the deadline does not change what was reported.
    return list(done)
