"""Asyncio helpers the event-loop code shares, and the extensions that keep the loop's CPU for
the crawl."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self, TypeVar

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.utils.log import get_scrapy_root_handler

T = TypeVar("T")


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


class Interrupted(Exception):
    """The wait was cut short by its :class:`Interrupter`."""


class Interrupter:
    """Cuts short, in one loop hop, every wait run through it; and every later one.

    Waiting with ``asyncio.wait`` on the awaited thing and an ``asyncio.Event`` costs two tasks
    and three loop hops per wait, each queued behind the answers being parsed: a freed permit
    reached its next call later, and B1 measured 0.950 against 0.957 without them. Here the
    waiting task itself is cancelled, and the cancellation becomes :class:`Interrupted` at the
    waiting point only (what is awaited sees a plain cancellation, and cleans up as for one).
    """

    def __init__(self) -> None:
        self._set = False
        self._waiting: set[asyncio.Task[Any]] = set()
        self._interrupted: set[asyncio.Task[Any]] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for task in self._waiting - self._interrupted:
            self._interrupted.add(task)
            task.cancel()

    async def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(*args)``, unless interrupted before it ends (:class:`Interrupted`)."""
        if self._set:
            raise Interrupted
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            result = await function(*args)
        except asyncio.CancelledError:
            if task not in self._interrupted:
                raise
            task.uncancel()
            raise Interrupted from None
        finally:
            self._waiting.discard(task)
            interrupted = task in self._interrupted
            self._interrupted.discard(task)
        if interrupted:  # what was awaited swallowed the cancellation (redis-py can)
            task.uncancel()
        return result


class _WhileCrawling:
    """An extension that sets something up when the spider opens and undoes it at close."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls()
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def spider_opened(self) -> None:
        raise NotImplementedError

    def spider_closed(self) -> None:
        raise NotImplementedError


#: Allocations between collections of the youngest generation while a crawl runs.
YOUNG_THRESHOLD: Final = 10_000


class FrozenStartup(_WhileCrawling):
    """Extension: what start-up allocated (Scrapy, Twisted, pymongo, aiohttp, the settings)
    stays out of the cyclic garbage collector's walks while the crawl runs.

    A full collection mid-crawl walked all of it and stalled the event loop for tens of
    milliseconds, every answer that arrived meanwhile waiting behind it: the longest gaps
    between an answer and the next paid call in B1 (BENCHMARKS.md). Unfrozen at close, so a
    process that runs several crawls (the tests) keeps collecting what they left.

    The youngest generation is collected after ``YOUNG_THRESHOLD`` allocations rather than
    700: a page's products are thousands of small dicts, freed by reference counting, and
    the collections they set off were a tenth of a crawl's CPU (B3). Restored at close.
    """

    def __init__(self) -> None:
        self._thresholds: tuple[int, int, int] | None = None

    def spider_opened(self) -> None:
        gc.freeze()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self._thresholds[1:])

    def spider_closed(self) -> None:
        gc.unfreeze()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)


class RootLogLevel(_WhileCrawling):
    """Extension: while the crawl runs, the root logger has ``LOG_LEVEL``'s level, so records
    below it are never built.

    Scrapy leaves the root logger at ``NOTSET`` and filters at its handler, so every
    ``logger.debug`` in the process still builds its record (caller lookup included) for
    nothing: pymongo's per-command telemetry alone doubled the CPU of each write (0.33 ms
    against 0.16 ms for an unacknowledged insert, BENCHMARKS.md), and the answer spool's write
    holds a permit. Only when Scrapy's own root handler is installed; the level before is
    restored at close.
    """

    def __init__(self) -> None:
        self._before: int | None = None

    def spider_opened(self) -> None:
        handler = get_scrapy_root_handler()
        if handler is not None and logging.root.level < handler.level:
            self._before = logging.root.level
            logging.root.setLevel(handler.level)

    def spider_closed(self) -> None:
        if self._before is not None:
            logging.root.setLevel(self._before)
            self._before = None
