"""How long alert delivery takes to give up on a service that hangs, or answers 500.

    .venv/bin/python -m tests.benchmarks.alerts_give_up            # 1, 2 and 5 s
    .venv/bin/python -m tests.benchmarks.alerts_give_up 1 10

One message to a real local webhook (``tests/webhook.py``) through Apprise's ``json://``, with
``TMAPI_ALERTS_TIMEOUT`` as given, timed from the call to its return, three times each.
"""

from __future__ import annotations

import sys
import time

from tests.webhook import Webhook
from tmapi_crawler.alerts.deliver import apprise_module, send

REPEATS = 3


def give_up(mode: str, timeout: float) -> list[float]:
    times = []
    with Webhook(mode) as hook:
        for _ in range(REPEATS):
            start = time.monotonic()
            delivered = send([(hook.url, "tmapi: give-up time", "sample")], timeout)
            times.append(time.monotonic() - start)
            assert delivered == [False]
    return times


def main(timeouts: list[float]) -> None:
    apprise_module()  # imported once, before timing
    print("| TMAPI_ALERTS_TIMEOUT | service | give-up time, s (3 runs) |")
    print("| --- | --- | --- |")
    for timeout in timeouts:
        for mode in ("hang", "fail"):
            times = give_up(mode, timeout)
            print(f"| {timeout:g} s | {mode} | {', '.join(f'{t:.3f}' for t in times)} |")


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [1.0, 2.0, 5.0])
