"""Asyncio helpers the event-loop code shares."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from scrapy import signals
from scrapy.crawler import Crawler


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``event``; whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives as the
    event is set, and a loop cancelled at close then waits forever (a cluster worker hung at
    close that way). ``asyncio.timeout`` lets the cancellation through.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


class FrozenStartup:
    """Extension: what start-up allocated (Scrapy, Twisted, pymongo, aiohttp, the settings)
    stays out of the cyclic garbage collector's walks while the crawl runs.

    A full collection mid-crawl walked all of it and stalled the event loop for tens of
    milliseconds, every answer that arrived meanwhile waiting behind it: the longest gaps
    between an answer and the next paid call in B1 (BENCHMARKS.md). Unfrozen at close, so a
    process that runs several crawls (the tests) keeps collecting what they left.
    """

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FrozenStartup:
        extension = cls()
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        gc.freeze()

    def spider_closed(self) -> None:
        gc.unfreeze()
