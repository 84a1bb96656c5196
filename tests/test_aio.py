"""The asyncio helpers that the transport, the limiter and the scheduler wait with."""

from __future__ import annotations

import asyncio

import pytest

from tmapi_crawler.aio import wait_set


def test_a_wait_cancelled_as_its_event_is_set_ends_cancelled() -> None:
    """``asyncio.wait_for`` swallows this cancellation on Python 3.11: a scheduler loop
    cancelled at close then went on waiting, and a cluster worker never exited."""

    async def loop(event: asyncio.Event) -> None:
        while True:
            await wait_set(event, 60)
            event.clear()

    async def scenario() -> None:
        event = asyncio.Event()
        waiting = asyncio.ensure_future(loop(event))
        await asyncio.sleep(0)
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())


def test_wait_set_says_whether_the_event_came() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_set(event, 0.01)
        event.set()
        return missed, await wait_set(event, 60)

    assert asyncio.run(scenario()) == (False, True)
