"""The keeper of a worker: heartbeats, dead workers' leases, a lost crawl, the crawl's end.

One task says this worker is alive and looks at the cluster (``Census``): it takes back the
leases of workers whose heartbeat expired, notices when Redis lost the crawl, and decides when
this worker closes — the moment the cluster crawl is complete (nothing queued, nothing leased
anywhere, every entry ever queued done or failed), which exactly one worker records. Only a
crawl that never had work waits ``MAX_IDLE_TIME_BEFORE_CLOSE`` for a late seed.

It also writes this worker's progress snapshot, which ``scrapy status`` and the crawl's end
add up (``status.py``): the progress counters of its stats, the losses it noticed (the
``worker_snapshot`` signal) and the categories of the unfiltered queries it took pages of.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import redis
from scrapy.exceptions import DontCloseSpider

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import FINISHED, REDIS_STATE_LOST, close_spider
from tmapi_crawler.distributed.leases import on_redis
from tmapi_crawler.distributed.queue import CrawlGone
from tmapi_crawler.stats import Progress, Rate
from tmapi_crawler.storage.coverage import losses

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from tmapi_crawler.distributed.cluster import Census, Cluster, Completion
    from tmapi_crawler.distributed.leases import Leases
    from tmapi_crawler.distributed.queue import SharedQueue

logger = logging.getLogger(__name__)


class Keeper:
    """Heartbeats, reaping, the crawl's end and lost state, for one worker.

    ``locally_idle()`` says whether nothing is in progress in this worker; ``wake()`` tells the
    fetcher that there may be work to take (a dead worker's leases went back to the queue).
    """

    def __init__(self, crawler: Crawler, cluster: Cluster, leases: Leases, *,
                 locally_idle: Callable[[], bool], wake: Callable[[], None]) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.cluster = cluster
        self.leases = leases
        self.max_idle = settings.getfloat("MAX_IDLE_TIME_BEFORE_CLOSE")
        #: Past the storage pipeline's own patience, products still not stored are lost.
        self.storage_patience = settings.getfloat("MONGO_RETRY_TIMEOUT") + 60
        #: The cluster crawl's id, once this worker joined it.
        self.crawl_id: str | None = None
        self.queue: SharedQueue | None = None
        #: Why this worker stops, once it decided to: no new work is taken after that.
        self.stopping: str | None = None
        #: Categories of the unfiltered queries this worker took pages of: the crawl's end
        #: tells the complete ones among all workers' (``status.read_totals``).
        self.categories: set[int] = set()
        self._locally_idle = locally_idle
        self._wake = wake
        self._look = asyncio.Event()
        self._rate = Rate()
        self._started_at = time.time()
        self._idle_since: float | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._marking: asyncio.Task[None] | None = None

    def info(self, state: str, **extra: Any) -> dict[str, Any]:
        return self.cluster.worker_info(state, started_at=self._started_at,
                                        crawl_id=self.crawl_id, **extra)

    def snapshot(self, state: str) -> str:
        """This worker's progress counters, as ``scrapy status`` adds them up, with the losses
        it noticed, which the crawl's end reads to tell the categories seen whole."""
        stats = self.stats.get_stats()
        progress = Progress.from_stats(stats)
        self._rate.add(time.monotonic(), progress.pages_done)
        parts: dict[str, Any] = {}
        for _, part in self.crawler.signals.send_catch_log(tmapi_signals.worker_snapshot):
            if isinstance(part, dict):
                parts.update(part)
        return json.dumps({**asdict(progress), "rate": self._rate.per_second(),
                           "state": state, "crawl_id": self.crawl_id, **losses(stats),
                           "categories": sorted(self.categories), **parts})

    # Life.

    def start(self, queue: SharedQueue) -> None:
        self.queue = queue
        self._task = asyncio.ensure_future(on_redis(
            "heartbeat", self._beat, running=lambda: self.stopping is None and not self._closing,
            lost=self.state_lost))

    def look(self) -> None:
        """Look at the cluster now rather than at the next heartbeat: this worker found
        nothing to take, and the crawl may be complete."""
        self._look.set()

    def working(self) -> None:
        """This worker has work: it is not idle."""
        self._idle_since = None

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._marking is not None:
            await self._marking

    async def exit(self, reason: str) -> None:
        """Say this worker left cleanly, with its last progress counters."""
        with contextlib.suppress(redis.RedisError, CrawlGone):
            await self.cluster.exit(self.crawl_id or "",
                                    self.info("exited", finish_reason=reason),
                                    self.snapshot("exited"))

    def stop(self, reason: str) -> None:
        """Stop taking work and close the crawl with ``reason``, once."""
        if self.stopping is None:
            self.stopping = reason
            close_spider(self.crawler, reason)

    def spider_idle(self) -> None:
        """The keeper decides when this worker closes: until then it stays."""
        if self.stopping is None:
            raise DontCloseSpider

    # The heartbeat.

    async def _beat(self) -> bool:
        """One heartbeat: False once this worker's end is decided."""
        assert self.crawl_id is not None
        census = await self.cluster.heartbeat(self.crawl_id, self.info("running"))
        await self._reap(census)
        completion = await self._idle_check(census)
        if completion is not None:
            self._end(completion)
            return False
        self._look.clear()
        await wait_set(self._look, self.cluster.heartbeat_interval)
        return True

    async def _reap(self, census: Census) -> None:
        requeued = failed = 0
        for worker in census.dead_with_leases:
            r, f = await self.cluster.reap(worker)
            requeued, failed = requeued + r, failed + f
        if requeued or failed:
            self.stats.inc_value(stats_keys.DISTRIBUTED_REAPED, requeued)
            logger.warning("Workers %s stopped heartbeating: %d of their requests re-queued, %d "
                           "failed as poison", ", ".join(census.dead_with_leases), requeued, failed)
            self._wake()

    async def _idle_check(self, census: Census) -> Completion | None:
        """Complete the crawl once nothing is left of it here or anywhere in the cluster; a
        crawl that never had work is completed after ``MAX_IDLE_TIME_BEFORE_CLOSE`` seconds
        of that (a seed may still come). None while it is not over."""
        if not self._locally_idle():
            self._idle_since = None
            return None
        await self.leases.give_back_lost(self.storage_patience)
        crawl_id = self.crawl_id or ""
        if census.complete:
            return await self.cluster.complete(crawl_id)
        if self.leases.pages or census.busy:
            self._idle_since = None
            return None
        assert self.queue is not None
        if await self.queue.known():
            return await self.cluster.complete(crawl_id)
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.max_idle:
            return None
        self.stats.set_value(stats_keys.DISTRIBUTED_IDLE, round(now - self._idle_since, 3))
        return await self.cluster.complete(crawl_id)

    def _end(self, completion: Completion) -> None:
        if completion.lost:
            self.stats.set_value(stats_keys.DISTRIBUTED_MISSING, completion.missing)
            logger.error("Cluster crawl %s cannot be complete: %d of its queued entries were "
                         "never done nor failed, so Redis lost them (it keeps no append-only "
                         "file?); run `scrapy seed` again to crawl what is missing",
                         self.crawl_id, completion.missing)
            self.stop(REDIS_STATE_LOST)
            return
        logger.info("Cluster crawl %s is complete%s", self.crawl_id,
                    "; this worker finalises it" if completion.finaliser else "")
        self.crawler.signals.send_catch_log(tmapi_signals.crawl_complete,
                                            crawl_id=self.crawl_id,
                                            finaliser=completion.finaliser)
        self.stop(FINISHED)

    # Lost state.

    def state_lost(self) -> None:
        """Redis lost the crawl: stop, and leave a mark saying so (never report it finished)."""
        if self.stopping is not None:
            return
        self.cluster.stopping = REDIS_STATE_LOST
        logger.error("Redis lost the state of cluster crawl %s (restarted without persistence, "
                     "or flushed): its queue and leases are gone, so the crawl cannot be "
                     "completed. Stopping; products stored so far stay in MongoDB, and "
                     "`scrapy seed` starts a new crawl", self.crawl_id)
        self._marking = asyncio.ensure_future(self._mark_lost())
        self.stop(REDIS_STATE_LOST)

    async def _mark_lost(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.cluster.mark_lost(self.crawl_id or "", "restart")
