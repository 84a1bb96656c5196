"""How a crawl stops early: the finish reasons this project adds, and one helper to close.

Components that must end the crawl (the transport on a 439, storage when MongoDB is gone, a
distributed worker that lost Redis) call :func:`close_spider` with a reason from here instead
of each keeping its own future: the first reason wins, later calls are no-ops, and the finish
reasons are public contracts (``crawl_runs.finish_reason``, exit status, the docs) spelled once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final
from weakref import WeakKeyDictionary

from tmapi_crawler import api

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

FINISHED: Final = "finished"
QUOTA_EXHAUSTED: Final = "tmapi_quota_exhausted"
UNAUTHORIZED: Final = "tmapi_unauthorized"
MONGODB_UNAVAILABLE: Final = "mongodb_unavailable"
FOREIGN_REQUEST: Final = "tmapi_foreign_request"
REDIS_UNAVAILABLE: Final = "redis_unavailable"
#: Redis lost the cluster crawl's state (a restart without persistence, a flush) or some of its
#: queued entries: the crawl cannot be completed, and is never reported ``finished``.
REDIS_STATE_LOST: Final = "redis_state_lost"

#: The API answers that end the whole crawl, and the finish reason each one gives.
STOPPING_OUTCOMES: Final = {
    api.Outcome.QUOTA: QUOTA_EXHAUSTED,
    api.Outcome.UNAUTHORIZED: UNAUTHORIZED,
}

_CLOSING: WeakKeyDictionary[Crawler, asyncio.Future[None]] = WeakKeyDictionary()


def close_spider(crawler: Crawler, reason: str) -> None:
    """Close the crawl with ``reason``, once, without waiting for the requests in flight.

    Scrapy's ``close_spider_async`` is awaited in the background: the caller is usually inside
    a request or a flush that the close itself waits for.
    """
    if crawler in _CLOSING or crawler.engine is None or crawler.engine.spider is None:
        return
    _CLOSING[crawler] = asyncio.ensure_future(crawler.engine.close_spider_async(reason=reason))

