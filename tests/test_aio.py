"""The asyncio helpers that the transport, the limiter and the scheduler wait with."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import pytest
from scrapy import signals
from scrapy.utils.log import (  # the private one: nothing public takes Scrapy's handler out
    _uninstall_scrapy_root_handler,
    install_scrapy_root_handler,
)
from scrapy.utils.test import get_crawler

from tmapi_crawler.aio import (
    YOUNG_THRESHOLD,
    FrozenStartup,
    Interrupted,
    Interrupter,
    RootLogLevel,
    wait_set,
)


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


def test_what_start_up_allocated_is_out_of_the_collectors_walks_while_the_crawl_runs() -> None:
    crawler = get_crawler()
    extension = FrozenStartup.from_crawler(crawler)  # signals hold their receivers weakly
    gc.unfreeze()
    before = gc.get_threshold()
    crawler.signals.send_catch_log(signals.spider_opened, spider=None)
    frozen, crawling = gc.get_freeze_count(), gc.get_threshold()
    crawler.signals.send_catch_log(signals.spider_closed, spider=None, reason="finished")
    del extension
    assert frozen > 10_000  # the interpreter, Scrapy and every module imported so far
    assert gc.get_freeze_count() == 0
    # The youngest generation is collected less often while the crawl runs, and as before
    # once it is over.
    assert crawling == (YOUNG_THRESHOLD, *before[1:]) != before
    assert gc.get_threshold() == before


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_no_record_below_log_level_is_built_while_the_crawl_runs(level: str) -> None:
    crawler = get_crawler(settings_dict={"LOG_LEVEL": level})
    extension = RootLogLevel.from_crawler(crawler)
    before = logging.root.level
    install_scrapy_root_handler(crawler.settings)
    try:
        crawler.signals.send_catch_log(signals.spider_opened, spider=None)
        debug_built = logging.getLogger("pymongo.command").isEnabledFor(logging.DEBUG)
        info_built = logging.getLogger("pymongo.command").isEnabledFor(logging.INFO)
        crawler.signals.send_catch_log(signals.spider_closed, spider=None, reason="finished")
        restored = logging.root.level
    finally:
        _uninstall_scrapy_root_handler()
        logging.root.setLevel(before)
        del extension
    assert (debug_built, info_built) == (level == "DEBUG", True)
    assert restored == logging.NOTSET  # as Scrapy left it


def test_an_interrupted_wait_ends_at_once_and_what_it_awaited_cleans_up() -> None:
    async def scenario() -> None:
        interrupter, cleaned, started = Interrupter(), asyncio.Event(), asyncio.Event()

        async def held() -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # forever
            finally:
                cleaned.set()

        async def waiter() -> int:
            with pytest.raises(Interrupted):
                await interrupter.run(held)
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()  # the interruption is not left pending on the task

        waiting = asyncio.ensure_future(waiter())
        await started.wait()
        interrupter.set()
        assert await asyncio.wait_for(waiting, 5) == 0
        assert cleaned.is_set()
        with pytest.raises(Interrupted):  # and every later wait
            await interrupter.run(asyncio.sleep, 60)

    asyncio.run(scenario())


def test_a_wait_whose_awaited_swallows_the_interruption_returns_its_result() -> None:
    async def scenario() -> None:
        interrupter, started = Interrupter(), asyncio.Event()

        async def stubborn() -> str:
            started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return "granted"

        async def waiter() -> tuple[str, int]:
            result = await interrupter.run(stubborn)
            task = asyncio.current_task()
            assert task is not None
            return result, task.cancelling()

        waiting = asyncio.ensure_future(waiter())
        await started.wait()
        interrupter.set()
        assert await asyncio.wait_for(waiting, 5) == ("granted", 0)

    asyncio.run(scenario())
