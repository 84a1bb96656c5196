"""scrapy-redis's scheduler, made fit for Scrapy 2.19 and for workers that may die at any time.

What it changes in ``scrapy_redis.scheduler.Scheduler`` (0.9.1, tested upstream up to 2.11):

* one Redis connection pool for the scheduler, queue and dupefilter (the ``Cluster``'s), keys
  derived from ``TMAPI_REDIS_PREFIX``, stats without the ``spider`` argument Scrapy deprecated;
* shared state is never wiped: ``SCHEDULER_PERSIST`` must be on, ``SCHEDULER_FLUSH_ON_START``
  off, and ``SCHEDULER_IDLE_BEFORE_CLOSE`` (a blocking pop that stalls the event loop) unused;
* queueing marks a request seen and queues it in one atomic step;
* the acknowledgement ledger: a request popped from the shared queue stays leased to this
  worker until its page is parsed and every product of it stored (``tmapi_crawler.signals``),
  or until it failed for good; a clean stop gives the rest back, a dead worker's leases are
  given back by the others (the reaper runs with every heartbeat and idle check);
* the worker's lifetime: it stays while the cluster has queued or leased requests, and closes
  after ``MAX_IDLE_TIME_BEFORE_CLOSE`` seconds without any.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object
from scrapy_redis.scheduler import Scheduler

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import (
    FOREIGN_REQUEST,
    REDIS_UNAVAILABLE,
    STOPPING_OUTCOMES,
    close_spider,
)
from tmapi_crawler.distributed.cluster import Census, Cluster, ClusterSettingsError
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.distributed.queue import LEASE_META, ForeignRequest, ReliablePriorityQueue
from tmapi_crawler.storage.writer import MongoPipeline

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

    from tmapi_crawler.items import ProductPage

logger = logging.getLogger(__name__)

#: Page failures that are not the page's fault: the crawl is stopping (quota, bad token,
#: shutdown). Such pages stay leased and go back to the queue, for a later resume.
RESUMABLE_FAILURES = frozenset(
    {"not_sent"}
    | {str(code) for code, error in api.ERROR_CODES.items() if error.outcome in STOPPING_OUTCOMES}
)


def _stores_items(settings: BaseSettings) -> bool:
    """Whether the storage pipeline, which says when items are durable, is enabled."""
    return any(
        isinstance(cls := load_object(path), type) and issubclass(cls, MongoPipeline)
        for path in build_component_list(settings.getwithbase("ITEM_PIPELINES"))
    )


@dataclass(slots=True)
class _Page:
    """A leased request's progress: its page item still to be stored, None until parsed."""

    items_left: int | None = None
    parsed_at: float = 0.0


class DistributedScheduler(Scheduler):
    def __init__(self, crawler: Crawler, cluster: Cluster) -> None:
        settings = crawler.settings
        super().__init__(
            server=cluster.redis,
            persist=True,
            queue_key=cluster.keys.queue,
            queue_cls=settings.get("SCHEDULER_QUEUE_CLASS"),
            dupefilter=cluster.dupefilter(),
            dupefilter_key=cluster.keys.dupefilter,
            serializer=load_object(settings.get("SCHEDULER_SERIALIZER")),
        )
        self.crawler = crawler
        self.stats = crawler.stats
        self.cluster = cluster
        self.worker_id = cluster.worker_id
        #: The cluster crawl's id, which the storage pipeline records products under.
        self.crawl_id: str | None = None
        self.queue: ReliablePriorityQueue | None = None  # type: ignore[assignment]
        self.max_idle = settings.getfloat("MAX_IDLE_TIME_BEFORE_CLOSE")
        #: Past the storage pipeline's own patience, products still not stored are lost.
        self.storage_patience = settings.getfloat("MONGO_RETRY_TIMEOUT") + 60
        self.poll_interval = settings.getfloat("TMAPI_QUEUE_POLL_INTERVAL")
        if self.poll_interval <= 0 or self.max_idle < 0:
            raise ClusterSettingsError("TMAPI_QUEUE_POLL_INTERVAL must be positive and "
                                       "MAX_IDLE_TIME_BEFORE_CLOSE not negative")
        self._pages: dict[str, _Page] = {}
        self._items: dict[int, tuple[ProductPage, str]] = {}
        self._idle_since: float | None = None
        self._started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DistributedScheduler:
        settings = crawler.settings
        if not settings.getbool("SCHEDULER_PERSIST"):
            raise ClusterSettingsError("SCHEDULER_PERSIST must be True: with a shared queue, the "
                                       "first worker to close would delete everyone's work")
        if settings.getbool("SCHEDULER_FLUSH_ON_START"):
            raise ClusterSettingsError("SCHEDULER_FLUSH_ON_START would delete the other workers' "
                                       "work; `scrapy seed` starts a new crawl when one is over")
        if settings.getint("SCHEDULER_IDLE_BEFORE_CLOSE"):
            raise ClusterSettingsError("SCHEDULER_IDLE_BEFORE_CLOSE blocks the event loop; use "
                                       "MAX_IDLE_TIME_BEFORE_CLOSE")
        scheduler = cls(crawler, Cluster.of(crawler))
        connect = crawler.signals.connect
        connect(scheduler.page_parsed, signal=tmapi_signals.page_parsed)
        if _stores_items(settings):
            connect(scheduler.items_stored, signal=tmapi_signals.items_stored)
        else:
            logger.warning("No MongoPipeline: pages are acknowledged once their items passed "
                           "the item pipelines, stored or not")
            connect(scheduler.item_settled, signal=signals.item_scraped)
        connect(scheduler.page_failed, signal=tmapi_signals.page_failed)
        connect(scheduler.spider_error, signal=signals.spider_error)
        connect(scheduler.item_settled, signal=signals.item_dropped)
        connect(scheduler.item_error, signal=signals.item_error)
        connect(scheduler.spider_idle, signal=signals.spider_idle)
        connect(scheduler.spider_opened, signal=signals.spider_opened)
        return scheduler

    def _info(self, state: str, **extra: Any) -> dict[str, Any]:
        return self.cluster.worker_info(state, started_at=self._started_at,
                                        crawl_id=self.crawl_id, **extra)

    def open(self, spider: Spider) -> None:
        """Join the cluster crawl (a worker given arguments may start a new one) and register."""
        self.spider = spider
        self.queue = self.cluster.open_queue(spider, self.worker_id)
        seeding = bool(getattr(spider, "arguments", None))
        try:
            self.crawl_id, fresh = self.cluster.begin_crawl(
                renew=seeding, worker_info=self._info("running")
            )
            queued = len(self.queue)
        except redis.RedisError as exc:
            # Closed once open: Scrapy 2.19 skips opening the item pipelines when ``open``
            # raises CloseSpider, and then fails closing them.
            logger.error("Redis at %s unreachable (%s): nothing was sent to the API",
                         redact_url(self.cluster.url), exc)
            return
        self.stats.set_value(stats_keys.WORKER_ID, self.worker_id)
        logger.info("%s cluster crawl %s at %s as worker %s; %d requests queued",
                    "Started" if fresh else "Joined", self.crawl_id,
                    redact_url(self.cluster.url), self.worker_id, queued)
        self._tasks = [asyncio.ensure_future(self._heartbeat()),
                       asyncio.ensure_future(self._poll())]

    def close(self, reason: str) -> None:
        """Give back what this worker did not finish, and say it left: nothing shared is wiped."""
        for task in self._tasks:
            task.cancel()
        if self.queue is None or self.crawl_id is None:
            return
        leftover = list(self._pages)
        self._pages.clear()
        self._items.clear()
        try:
            requeued, _ = self.queue.give_back(leftover, counted=False, reason="shutdown")
            self.cluster.heartbeat(self._info("exited", finish_reason=reason), alive=False)
        except redis.RedisError as exc:
            logger.error("Redis: %s; the other workers will take back this worker's %d "
                         "unfinished requests once its heartbeat expires", exc, len(leftover))
            return
        if requeued:
            self.stats.inc_value(stats_keys.DISTRIBUTED_GIVEN_BACK, requeued)
            logger.info("Gave %d unfinished requests back to the shared queue", requeued)

    def spider_opened(self) -> None:
        if self.crawl_id is None:
            self._close_soon(REDIS_UNAVAILABLE)

    def _close_soon(self, reason: str) -> None:
        self._stopping = True
        close_spider(self.crawler, reason)

    def has_pending_requests(self) -> bool:
        return self.crawl_id is not None and super().has_pending_requests()

    def enqueue_request(self, request: Request) -> bool:
        assert self.queue is not None
        if self.crawl_id is None:  # not joined: closing
            return False
        if request.dont_filter:
            self.queue.push(request)
        elif not self.queue.push_unique(request, self.df):
            self.df.log(request, self.spider)
            self.stats.inc_value("dupefilter/filtered")
            return False
        self.stats.inc_value("scheduler/enqueued/redis")
        return True

    def next_request(self) -> Request | None:
        assert self.queue is not None
        if self.crawl_id is None:  # not joined: closing
            return None
        try:
            request = self.queue.pop()
        except ForeignRequest as exc:
            if not self._stopping:
                logger.error("%s; stopping this worker", exc)
                self._close_soon(FOREIGN_REQUEST)
            return None
        if request is None:
            return None
        self._pages[request.meta[LEASE_META]] = _Page()
        self._idle_since = None
        self.stats.inc_value("scheduler/dequeued/redis")
        return request

    # The acknowledgement ledger.

    def page_parsed(self, request: Request, items: list[ProductPage]) -> None:
        lease = request.meta.get(LEASE_META)
        page = self._pages.get(lease or "")
        if lease is None or page is None:
            return
        if not items:
            self._ack([lease])
            return
        page.items_left, page.parsed_at = len(items), time.monotonic()
        for item in items:
            self._items[id(item)] = (item, lease)

    def items_stored(self, items: list[ProductPage]) -> None:
        self._ack([lease for item in items if (lease := self._settle(item))])

    def item_settled(self, item: Any) -> None:
        """A pipeline decided not to keep the page (or none stores it): it is done."""
        if lease := self._settle(item):
            self._ack([lease])

    def item_error(self, item: Any) -> None:
        """A pipeline failed on a page: it is not complete, record it as failed."""
        entry = self._items.get(id(item))
        if entry is not None:
            self._fail(entry[1], "item_error")

    def page_failed(self, request: Request, reason: str) -> None:
        lease = request.meta.get(LEASE_META)
        if lease in self._pages and reason not in RESUMABLE_FAILURES:
            self._fail(lease, reason)

    def spider_error(self, failure: Failure, response: Response | None) -> None:
        """The callback raised: retrying the page would raise again."""
        request = getattr(response, "request", None)
        lease = request.meta.get(LEASE_META) if request is not None else None
        if lease in self._pages:
            self._fail(lease, "spider_error")

    def _settle(self, item: Any) -> str | None:
        """Count one product of a page as done; the page's lease when it was the last one."""
        entry = self._items.pop(id(item), None)
        if entry is None:
            return None
        lease = entry[1]
        page = self._pages.get(lease)
        if page is None or page.items_left is None:
            return None
        page.items_left -= 1
        return lease if page.items_left == 0 else None

    def _ack(self, leases: list[str]) -> None:
        if not leases:
            return
        for lease in leases:
            self._pages.pop(lease, None)
        assert self.queue is not None
        acked = self.queue.ack(leases)
        self.stats.inc_value(stats_keys.DISTRIBUTED_ACKED, acked)
        if acked < len(leases):
            self.stats.inc_value(stats_keys.DISTRIBUTED_RECLAIMED, len(leases) - acked)

    def _fail(self, lease: str, reason: str) -> None:
        self._pages.pop(lease, None)
        for key in [k for k, (_, owner) in self._items.items() if owner == lease]:
            del self._items[key]
        assert self.queue is not None
        self.queue.fail(lease, reason)
        self.stats.inc_value(stats_keys.DISTRIBUTED_FAILED)

    # Lifetime.

    def spider_idle(self) -> None:
        """Keep the worker while the cluster has work; close after ``MAX_IDLE_TIME_BEFORE_CLOSE``.

        Called when this worker has nothing in progress: its own leases then wait for their
        products to be stored (the pipeline flushes on a timer), or are lost to it.
        """
        assert self.queue is not None
        if self.crawl_id is None:  # not joined: closing with its own reason
            raise DontCloseSpider
        now = time.monotonic()
        try:
            self._give_back_lost(now)
            if self._pages:
                raise DontCloseSpider
            census = self.cluster.census()
            self._reap(census)
        except redis.RedisError as exc:
            logger.warning("Redis: %s; staying up", exc)
            raise DontCloseSpider from None
        if census.busy:
            self._idle_since = None
            raise DontCloseSpider
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.max_idle:
            raise DontCloseSpider

    def _give_back_lost(self, now: float) -> None:
        """Return leases whose page can no longer complete in this worker.

        Called while nothing is in progress here: a page never parsed nor failed vanished (a
        component dropped its request), and one whose products are not stored long after the
        storage pipeline would have given up lost them. Both count as a delivery, so a request
        that always ends that way is failed as poison instead of looping.
        """
        lost = {lease for lease, page in self._pages.items()
                if page.items_left is None or now - page.parsed_at > self.storage_patience}
        if not self._pages:
            # Leases Redis holds for this worker that it no longer tracks (an acknowledgement
            # that did not reach Redis): the cluster would wait for them forever.
            assert self.queue is not None
            lost.update(self.queue.leased_ids())
        if not lost:
            return
        for lease in lost:
            del self._pages[lease]
        for key in [k for k, (_, lease) in self._items.items() if lease in lost]:
            del self._items[key]
        assert self.queue is not None
        self.queue.give_back(lost, counted=True, reason="lost_in_worker")
        logger.warning("%d requests ended without their products stored; gave them back",
                       len(lost))

    def _reap(self, census: Census) -> None:
        if not census.dead_with_leases:
            return
        requeued, failed = self.cluster.reap_dead(census)
        if requeued or failed:
            self.stats.inc_value(stats_keys.DISTRIBUTED_REAPED, requeued)
            logger.warning("Workers %s stopped heartbeating: %d of their requests re-queued, %d "
                           "failed as poison", ", ".join(census.dead_with_leases), requeued, failed)

    async def _heartbeat(self) -> None:
        while True:
            try:
                self.cluster.heartbeat(self._info("running"))
                self._reap(self.cluster.census())
            except redis.RedisError as exc:
                logger.warning("Redis heartbeat failed: %s", exc)
            await asyncio.sleep(self.cluster.heartbeat_interval)

    async def _poll(self) -> None:
        """Make the engine look at the shared queue every ``TMAPI_QUEUE_POLL_INTERVAL``.

        Scrapy asks the scheduler for requests when something happens in this process, or
        every 5 s; work queued by other workers must be picked up sooner than that. Scrapy has
        no public call for it: if its engine changes, this falls back to the 5-s heartbeat.
        """
        while True:
            await asyncio.sleep(self.poll_interval)
            slot = getattr(self.crawler.engine, "_slot", None)
            nextcall = getattr(slot, "nextcall", None)
            if nextcall is not None:
                nextcall.schedule()
