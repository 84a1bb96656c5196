"""The cluster crawl's budget of paid calls: one atomic counter in Redis (``budget_spend.lua``).

It implements ``transport.budget.Budget``. The counter is keyed by the session the workers belong
to (the crawl, and the cluster's last stop): a budget stop closes the limiter with
``tmapi_budget_exhausted``, which stops every worker started before it, and workers started
again afterwards (e.g. with a higher ``TMAPI_MAX_REQUESTS``) go on with a fresh count — the
way the limiter's stop flag lets a cluster resume after a 439. Without a budget no round trip
is made.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis
from scrapy import signals

from tmapi_crawler import closing
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.transport.limiter import LimiterClosed

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Delays between attempts while Redis does not answer.
_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)


class RedisBudget:
    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisBudget:
        budget = cls(crawler, Cluster.of(crawler), crawler.settings.getint("TMAPI_MAX_REQUESTS"))
        crawler.signals.connect(budget.start, signal=signals.spider_opened)
        return budget

    def __init__(self, crawler: Crawler, cluster: Cluster, maximum: int) -> None:
        if maximum < 0:
            raise ValueError("TMAPI_MAX_REQUESTS must be 0 (no budget) or more")
        self.crawler = crawler
        self.cluster = cluster
        self.maximum = maximum
        self._started_ms: int | None = None
        self._spent = 0

    async def start(self) -> None:
        """When this worker started, in Redis's clock: stops older than that are not for it."""
        if self.maximum:
            try:
                await self._start()
            except redis.RedisError as exc:
                logger.warning("Redis budget not ready (%s); retrying before the first call", exc)

    async def _start(self) -> int:
        if self._started_ms is None:
            self._started_ms = int(await self.cluster.scripts["limiter_now"]())
        return self._started_ms

    async def spend(self) -> bool:
        if not self.maximum:
            return True
        attempt = 0
        while True:
            try:
                started = await self._start()
                allowed, spent = await self.cluster.scripts["budget_spend"](
                    keys=[self.cluster.keys.budget, self.cluster.keys.crawl,
                          self.cluster.limiter_keys.stop],
                    args=[self.maximum, started])
                break
            except redis.RedisError as exc:
                if closing.stopping(self.crawler):
                    return False
                if not attempt:
                    logger.warning("Redis budget: %s; retrying", exc)
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
        self._spent = int(spent)
        if int(allowed) == -1:  # the cluster stopped (another reason): the limiter says why
            raise LimiterClosed
        return int(allowed) == 1

    @property
    def left(self) -> int | None:
        return max(self.maximum - self._spent, 0) if self.maximum else None
