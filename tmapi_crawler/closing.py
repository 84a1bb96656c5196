"""How a crawl stops: the finish reasons this project adds, one helper to close, and the guard
that tells every component the moment the crawl starts stopping.

Components that must end the crawl (the transport on a 439 or a spent budget, storage when
MongoDB is gone, a distributed worker that lost Redis) call :func:`close_spider` with a reason
from here instead of each keeping its own future: the first reason wins, later calls are no-ops,
and the finish reasons are public contracts (``crawl_runs.finish_reason``, exit status, the
docs) spelled once.

Scrapy says nothing when a crawl *starts* stopping: a Ctrl-C only clears ``crawler.crawling``,
and then waits for every request in progress — including those still waiting for a permit or
backing off, which would each become a paid call. :class:`StopGuard` turns both ways of stopping
(this module's helper, and Scrapy's own stop) into one signal, ``crawl_stopping``, sent once.

A second Ctrl-C makes Scrapy stop the reactor at once, without closing the spider: nothing
buffered would be written, no stats file, no finish reason. The guard registers a reactor
"before shutdown" trigger for that case and sends ``forced_stop`` (write out what you hold)
then ``crawl_killed`` (record how the crawl ended) before the process exits; the stats file is
written last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

from scrapy import signals
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.reactor import is_reactor_installed

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

FINISHED: Final = "finished"
#: Scrapy's own reason for a crawl stopped by Ctrl-C or SIGTERM.
SHUTDOWN: Final = "shutdown"
QUOTA_EXHAUSTED: Final = "tmapi_quota_exhausted"
UNAUTHORIZED: Final = "tmapi_unauthorized"
#: ``TMAPI_MAX_REQUESTS`` paid calls were spent; the crawl is resumable.
BUDGET_EXHAUSTED: Final = "tmapi_budget_exhausted"
#: ``scrapy estimate --probe`` fetched page 1 of each planned query and nothing more: the next
#: ``scrapy crawl`` of the same plan resumes it, as it resumes any crawl that did not finish.
PROBED: Final = "tmapi_probed"
MONGODB_UNAVAILABLE: Final = "mongodb_unavailable"
REDIS_UNAVAILABLE: Final = "redis_unavailable"
#: Redis lost the cluster crawl's state (a restart without persistence, a flush) or some of its
#: queued entries: the crawl cannot be completed, and is never reported ``finished``.
REDIS_STATE_LOST: Final = "redis_state_lost"

#: The API answers that end the whole crawl, and the finish reason each one gives.
STOPPING_OUTCOMES: Final = {
    api.Outcome.QUOTA: QUOTA_EXHAUSTED,
    api.Outcome.UNAUTHORIZED: UNAUTHORIZED,
}

#: How often the guard looks at ``crawler.crawling``, which Scrapy clears on Ctrl-C without a
#: signal. Components that must not start anything once stopping also check :func:`stopping`
#: synchronously right before they start it: this only bounds how long waiters sleep on.
_WATCH_INTERVAL: Final = 0.1


class _Stop:
    """One crawler's stop: its reason once known, the close in the background."""

    __slots__ = ("announced", "closing", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.closing: asyncio.Future[None] | None = None
        self.announced = False


_STOPS: WeakKeyDictionary[Crawler, _Stop] = WeakKeyDictionary()


def _stop_of(crawler: Crawler) -> _Stop:
    stop = _STOPS.get(crawler)
    if stop is None:
        stop = _STOPS[crawler] = _Stop()
    return stop


def close_spider(crawler: Crawler, reason: str) -> None:
    """Close the crawl with ``reason``, once, without waiting for the requests in flight.

    Scrapy's ``close_spider_async`` is awaited in the background: the caller is usually inside
    a request or a flush that the close itself waits for.
    """
    stop = _stop_of(crawler)
    if stop.reason is not None:
        return
    stop.reason = reason
    _announce(crawler, reason)
    engine = crawler.engine
    if engine is not None and engine.spider is not None:
        stop.closing = asyncio.ensure_future(engine.close_spider_async(reason=reason))


def stopping(crawler: Crawler) -> bool:
    """Whether the crawl is stopping: nothing new may start (a paid call above all)."""
    stop = _STOPS.get(crawler)
    return not crawler.crawling or (stop is not None and stop.reason is not None)


def stop_reason(crawler: Crawler) -> str:
    """The reason the crawl is stopping with: a helper's, or Scrapy's ``shutdown``."""
    stop = _STOPS.get(crawler)
    return stop.reason if stop is not None and stop.reason else SHUTDOWN


def _announce(crawler: Crawler, reason: str) -> None:
    stop = _stop_of(crawler)
    if stop.announced:
        return
    stop.announced = True
    # Handlers are synchronous: this is sent from inside requests and flushes.
    crawler.signals.send_catch_log(tmapi_signals.crawl_stopping, reason=reason)


class StopGuard:
    """The extension that announces a stop once, and saves what it can on a forced one."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.timeout = crawler.settings.getfloat("TMAPI_FORCED_STOP_TIMEOUT")
        self._watcher: asyncio.Task[None] | None = None
        self._trigger: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StopGuard:
        guard = cls(crawler)
        crawler.signals.connect(guard.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(guard.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(guard.engine_stopped, signal=signals.engine_stopped)
        return guard

    def spider_opened(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())
        if is_reactor_installed():
            from twisted.internet import reactor  # noqa: PLC0415 - only once one is installed

            self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._forced)

    def spider_closed(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    def engine_stopped(self) -> None:
        """Closed normally, run record and stats file written: no forced path any more."""
        if self._trigger is not None:
            from twisted.internet import reactor  # noqa: PLC0415

            with contextlib.suppress(ValueError):  # already fired
                reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

    async def _watch(self) -> None:
        while not stopping(self.crawler):
            await asyncio.sleep(_WATCH_INTERVAL)
        _announce(self.crawler, stop_reason(self.crawler))

    def _forced(self) -> Deferred[None]:
        """The reactor is stopping before the engine stopped: the second Ctrl-C."""
        self._trigger = None
        return deferred_from_coro(self._save())

    async def _save(self) -> None:
        crawler = self.crawler
        reason = stop_reason(crawler)
        logger.warning("Forced stop: saving what was parsed, then exiting (up to %.0f s)",
                       self.timeout)
        _announce(crawler, reason)
        crawler.stats.set_value(stats_keys.FORCED_STOP, 1)
        await crawler.signals.send_catch_log_async(tmapi_signals.forced_stop, reason=reason)
        await crawler.signals.send_catch_log_async(tmapi_signals.crawl_killed, reason=reason)
        if crawler.stats.get_value("finish_reason") is None:
            crawler.stats.set_value("finish_reason", reason)
        crawler.stats.close_spider(reason=reason)
