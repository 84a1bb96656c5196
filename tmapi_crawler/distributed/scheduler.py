"""The scheduler of a distributed worker: a Scrapy scheduler fed from the shared queue.

Scrapy calls a scheduler synchronously, from its event loop: a blocking Redis call there
stalls every request in flight (measured in BENCHMARKS.md). So this scheduler never calls
Redis itself; three tasks do, with the asyncio client:

* the **fetcher**, here, keeps a small local buffer of leased entries
  (``TMAPI_QUEUE_PREFETCH``), rebuilds each request from its page spec with the request
  factory it was handed (the spider's ``page_request`` unless given one: nothing but the page
  spec is taken from Redis) and hands it to the engine with ``engine.crawl``, which wakes the
  engine at once — no polling of Scrapy's private parts;
* the **writer** (``leases.py``) applies, in order, what the crawl produced: new entries,
  acknowledgements, failures, give-backs;
* the **keeper** (``keeper.py``) sends heartbeats, takes back dead workers' leases, notices
  when Redis lost the crawl, and ends the worker as soon as the cluster crawl is complete.

From scrapy-redis it keeps the dupefilter (fingerprints, its Redis set, its log) and the queue's
layout (``queue.py``); its scheduler, which blocks on Redis and pickles requests, is not used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis
from scrapy import signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.utils.conf import build_component_list
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.misc import load_object

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import REDIS_STATE_LOST, REDIS_UNAVAILABLE
from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.cluster import Cluster, ClusterSettingsError
from tmapi_crawler.distributed.keeper import Keeper
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.distributed.leases import Leases, on_redis
from tmapi_crawler.distributed.queue import CrawlGone, Leased, page_push
from tmapi_crawler.distributed.status import (
    read_status,
)
from tmapi_crawler.frontier.context import LEASE_META, META_KEY, PageContext
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.storage.writer import MongoPipeline

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Request
    from scrapy.settings import BaseSettings
    from twisted.internet.defer import Deferred

    from tmapi_crawler.distributed.queue import SharedQueue

logger = logging.getLogger(__name__)

#: Rebuilds a page's request from its page spec (the spider's ``page_request``).
RequestFactory = Callable[[PageContext], "Request"]
#: Refusal reasons are cut to this length: they may quote what someone wrote into Redis.
_REASON_CHARS = 200


def _stores_items(settings: BaseSettings) -> bool:
    """Whether the storage pipeline, which says when items are durable, is enabled."""
    return any(
        isinstance(cls := load_object(path), type) and issubclass(cls, MongoPipeline)
        for path in build_component_list(settings.getwithbase("ITEM_PIPELINES"))
    )


class DistributedScheduler(BaseScheduler):
    """The Scrapy adapter: the buffer Scrapy takes requests from, and its fetcher.

    ``factory`` rebuilds requests from page specs; None: the spider's ``page_request``, taken
    once when the scheduler opens.
    """

    def __init__(self, crawler: Crawler, cluster: Cluster,
                 factory: RequestFactory | None = None) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.cluster = cluster
        self.worker_id = cluster.worker_id
        self.factory = factory
        self.queue: SharedQueue | None = None
        self.spider: Spider | None = None
        self.poll_interval = settings.getfloat("TMAPI_QUEUE_POLL_INTERVAL")
        self.prefetch = settings.getint("TMAPI_QUEUE_PREFETCH")
        if (self.poll_interval <= 0 or settings.getfloat("MAX_IDLE_TIME_BEFORE_CLOSE") < 0
                or self.prefetch < 1):
            raise ClusterSettingsError("TMAPI_QUEUE_POLL_INTERVAL must be positive, "
                                       "TMAPI_QUEUE_PREFETCH at least 1 and "
                                       "MAX_IDLE_TIME_BEFORE_CLOSE not negative")
        self._buffer: deque[Request] = deque()
        self._injecting: Request | None = None
        self._wanted = asyncio.Event()
        self._popping = False
        #: Set at close: the fetcher's loop ends by it too, since a cancellation can be
        #: swallowed inside a library call on the way (seen as a worker that never exited).
        self._closing = False
        self._fetcher: asyncio.Task[None] | None = None
        self._open_error: str | None = None
        self.leases = Leases(crawler, cluster, snapshot=self._snapshot,
                             pushed=self._wanted.set, lost=self._state_lost)
        self.keeper = Keeper(crawler, cluster, self.leases, locally_idle=self._locally_idle,
                             wake=self._wanted.set)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DistributedScheduler:
        scheduler = cls(crawler, Cluster.of(crawler))
        stores = _stores_items(crawler.settings)
        if not stores:
            logger.warning("No MongoPipeline: pages are acknowledged once their items passed "
                           "the item pipelines, stored or not")
        scheduler.leases.connect(stores_items=stores)
        crawler.signals.connect(scheduler.keeper.spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(scheduler.spider_opened, signal=signals.spider_opened)
        return scheduler

    @property
    def crawl_id(self) -> str | None:
        """The cluster crawl's id, which the storage pipeline records products under."""
        return self.keeper.crawl_id

    def _snapshot(self, state: str) -> str:
        return self.keeper.snapshot(state)

    def _state_lost(self) -> None:
        self.keeper.state_lost()

    # Opening and closing.

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        """Join the cluster crawl (a worker given arguments may start a new one) and register.

        A failure is reported when the spider opened: Scrapy 2.19 skips opening the item
        pipelines when ``open`` raises, and then fails closing them.
        """
        self.spider = spider
        if self.factory is None:
            self.factory = spider.page_request
        cluster = self.cluster
        try:
            crawl_id, fresh = await cluster.begin_crawl(
                renew=bool(getattr(spider, "arguments", None)),
                worker_info=self.keeper.info("running"))
            await cluster.warn_without_persistence()
        except CrawlGone as exc:
            logger.error("Redis lost the state of cluster crawl %s: this worker will not work "
                         "on what is left of it; `scrapy seed` starts a new crawl", exc)
            self._open_error = REDIS_STATE_LOST
            return
        except redis.RedisError as exc:
            logger.error("Redis at %s unreachable (%s): nothing was sent to the API",
                         redact_url(cluster.url), exc)
            self._open_error = REDIS_UNAVAILABLE
            return
        self.keeper.crawl_id = crawl_id
        self.queue = cluster.queue(crawl_id, self.worker_id)
        self.stats.set_value(stats_keys.WORKER_ID, self.worker_id)
        logger.info("%s cluster crawl %s at %s as worker %s",
                    "Started" if fresh else "Joined", crawl_id,
                    redact_url(cluster.url), self.worker_id)
        self.leases.start(self.queue, spider)

    def spider_opened(self) -> None:
        """Take work only now: the item pipelines are open."""
        if self._open_error is not None:
            self.keeper.stop(self._open_error)
            return
        assert self.queue is not None
        self._fetcher = asyncio.ensure_future(on_redis(
            "taking work from the shared queue", self._fetch_next,
            running=lambda: self.keeper.stopping is None and not self._closing,
            lost=self._state_lost))
        self.keeper.start(self.queue)

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    async def _close(self, reason: str) -> None:
        """Finish the writes, give back what this worker did not finish, and say it left."""
        self._closing = True
        self._wanted.set()
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        await self.keeper.close()
        if self.queue is None:
            return
        lost = self.keeper.stopping == REDIS_STATE_LOST
        if not lost:
            self.leases.release(Spool.of(self.crawler).holds_unrecorded)
            self._buffer.clear()
            # The others take this worker's leases back once its heartbeat expired anyway.
            await self.leases.flushed(self.cluster.heartbeat_ttl)
        unwritten = await self.leases.close()
        if unwritten and not lost:
            logger.error("Redis: %d writes did not reach it; the other workers will take back "
                         "this worker's unfinished entries once its heartbeat expires",
                         unwritten)
        if not lost:
            await self.keeper.exit(reason)

    # What Scrapy calls.

    def has_pending_requests(self) -> bool:
        return bool(self._buffer)

    def enqueue_request(self, request: Request) -> bool:
        if request is self._injecting:  # leased by the fetcher, handed in by engine.crawl
            self._buffer.append(request)
            self._injecting = None
            return True
        if self.queue is None or self.keeper.stopping is not None:
            return False
        if META_KEY not in request.meta:
            logger.error("Not an API page, so it cannot be queued for the cluster: %s", request)
            return False
        self.leases.push(page_push(request, self.cluster.dupefilter), request)
        return True

    def next_request(self) -> Request | None:
        if len(self._buffer) <= self.prefetch // 2:
            self._wanted.set()
        if not self._buffer:
            return None
        self.keeper.working()
        self.stats.inc_value("scheduler/dequeued/redis")
        return self._buffer.popleft()

    def _locally_idle(self) -> bool:
        engine = self.crawler.engine
        return (not self._buffer and not self.leases.writing and not self._popping
                and engine is not None and engine.scheduler is not None
                and engine.spider_is_idle())

    # The fetcher.

    async def _fetch_next(self) -> bool:
        """Fill the local buffer from the shared queue, once; wait for room or for work."""
        assert self.queue is not None
        self._wanted.clear()
        room = self.prefetch - len(self._buffer)
        if room <= 0:
            await self._wanted.wait()
            return True
        self._popping = True
        popping = asyncio.ensure_future(self.queue.pop(room))
        try:
            leased = await asyncio.shield(popping)
        except asyncio.CancelledError:
            await self._return_popped(popping)
            raise
        finally:
            self._popping = False
        for entry in leased:
            self._admit(entry)
        if not leased:
            self.keeper.look()
            await wait_set(self._wanted, self.poll_interval)
        return True

    async def _return_popped(self, popping: asyncio.Future[list[Leased]]) -> None:
        """Closing while Redis leased entries to this worker: give them back, not strand them
        as leases of a worker that left (``in_flight_lost`` until its heartbeat expires)."""
        try:
            leased = await popping
        except (CrawlGone, redis.RedisError):
            return
        self.leases.give_back([entry.id for entry in leased], counted=False, reason="shutdown")

    def _admit(self, leased: Leased) -> None:
        """Rebuild a leased entry's request from its page spec and give it to the engine."""
        lease = leased.id
        try:
            context, _ = entries.decode(leased.entry, known=leased.known)
        except entries.RefusedEntry as exc:
            reason = f"refused: {exc}"[:_REASON_CHARS]
            logger.error("Refused entry %s of the shared queue (%s); kept in the failed list",
                         lease[:_REASON_CHARS], reason)
            self.stats.inc_value(stats_keys.DISTRIBUTED_REFUSED)
            self.leases.fail(lease, reason, counted=False)
            return
        assert self.factory is not None
        if not context.query.filters():
            self.keeper.categories.add(context.query.cat_id)
        request = self.factory(context)
        request.meta[LEASE_META] = lease
        if leased.deliveries > 1:  # a worker that had it may have paid for it, then died
            Spool.of(self.crawler).may_hold(context.key)
        self.leases.track(lease, key=context.key,
                          memo=self.cluster.keys.frontier_page(self.crawl_id or "", context.key))
        self._injecting = request
        self.crawler.engine.crawl(request)
        if self._injecting is request:  # a request_scheduled handler dropped it
            self._injecting = None
            self.leases.forget([lease])
            self.leases.give_back([lease], counted=True, reason="dropped")

    # Progress and totals, for the run record and the progress lines.

    async def progress_line(self, *, final: bool = False) -> str | None:
        """The cluster's progress line, as ``scrapy status`` shows it (``progress.py``)."""
        if self.crawl_id is None:
            return None
        try:
            status = await read_status(self.cluster, final=final)
        except redis.RedisError:
            return None
        if status["crawl_id"] != self.crawl_id:
            return None
        return str(status["cluster_progress"]["line"])
