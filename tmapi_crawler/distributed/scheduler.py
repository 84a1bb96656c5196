"""The scheduler of a distributed worker: a Scrapy scheduler fed from the shared queue.

Scrapy calls a scheduler synchronously, from its event loop: a blocking Redis call there
stalls every request in flight (measured in BENCHMARKS.md). So this scheduler never calls
Redis itself; three tasks do, with the asyncio client:

* the **fetcher** keeps a small local buffer of leased entries (``TMAPI_QUEUE_PREFETCH``),
  rebuilds each request from its page spec with the spider's own ``page_request`` (nothing but
  the page spec is taken from Redis) and hands it to the engine with ``engine.crawl``, which
  wakes the engine at once — no polling of Scrapy's private parts;
* the **writer** applies, in order, what the crawl produced: new entries, acknowledgements,
  failures, give-backs. Order matters: a page's follow-up entries are queued before its lease
  is acknowledged, so a worker dying at any point loses nothing;
* the **keeper** sends heartbeats, takes back dead workers' leases, notices when Redis lost
  the crawl, and ends the worker when the cluster crawl is complete.

From scrapy-redis it keeps the dupefilter (fingerprints, its Redis set, its log) and the queue's
layout (``queue.py``); its scheduler, which blocks on Redis and pickles requests, is not used.

The acknowledgement ledger: an entry popped from the shared queue stays leased to this worker
until its page is parsed and every product of it stored (``tmapi_crawler.signals``), or until it
failed for good; a clean stop gives the rest back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from scrapy import signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.conf import build_component_list
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.misc import load_object

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.accounting import Completeness
from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import (
    FINISHED,
    REDIS_STATE_LOST,
    REDIS_UNAVAILABLE,
    STOPPING_OUTCOMES,
    close_spider,
)
from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.cluster import (
    Census,
    Cluster,
    ClusterSettingsError,
    Completion,
    Outage,
)
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.distributed.queue import CrawlGone, Leased, Push, page_push
from tmapi_crawler.distributed.status import read_status
from tmapi_crawler.frontier.completeness import loss_to_dict
from tmapi_crawler.frontier.context import META_KEY
from tmapi_crawler.progress import Progress, Rate
from tmapi_crawler.storage.coverage import losses
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.storage.writer import MongoPipeline

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response
    from scrapy.settings import BaseSettings
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from tmapi_crawler.distributed.queue import SharedQueue
    from tmapi_crawler.items import ProductPage

logger = logging.getLogger(__name__)

#: ``Request.meta`` key carrying the lease id of a request popped from the shared queue.
#: Copies made for retries keep it, so any of them can acknowledge the page.
LEASE_META = "tmapi_lease"

#: Page failures that are not the page's fault: the crawl is stopping (quota, bad token,
#: shutdown). Such pages stay leased and go back to the queue, for a later resume.
RESUMABLE_FAILURES = frozenset(
    {"not_sent"}
    | {str(code) for code, error in api.ERROR_CODES.items() if error.outcome in STOPPING_OUTCOMES}
)
#: Refusal reasons are cut to this length: they may quote what someone wrote into Redis.
_REASON_CHARS = 200


def _stores_items(settings: BaseSettings) -> bool:
    """Whether the storage pipeline, which says when items are durable, is enabled."""
    return any(
        isinstance(cls := load_object(path), type) and issubclass(cls, MongoPipeline)
        for path in build_component_list(settings.getwithbase("ITEM_PIPELINES"))
    )


@dataclass(slots=True)
class _Page:
    """A leased entry's progress: its page item still to be stored, None until parsed."""

    items_left: int | None = None
    parsed_at: float = 0.0
    #: Products the page carried: added to the crawl's sightings when it is acknowledged.
    products: int = 0
    #: Where the frontier remembers how the page was decided: dropped with its lease.
    memo: str = ""
    #: The page's key (``PageContext.key``), its name in the answer spool.
    key: str = ""


@dataclass(slots=True)
class _Op:
    """One write for the writer: ``kind`` is push, ack, fail or give_back."""

    kind: str
    push: Push | None = None
    request: Request | None = None
    ids: list[str] = field(default_factory=list)
    products: list[int] = field(default_factory=list)
    memos: list[str] = field(default_factory=list)
    reason: str = ""
    counted: bool = False


class DistributedScheduler(BaseScheduler):
    def __init__(self, crawler: Crawler, cluster: Cluster) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.cluster = cluster
        self.worker_id = cluster.worker_id
        #: The cluster crawl's id, which the storage pipeline records products under.
        self.crawl_id: str | None = None
        self.queue: SharedQueue | None = None
        self.spider: Spider | None = None
        self.max_idle = settings.getfloat("MAX_IDLE_TIME_BEFORE_CLOSE")
        #: Past the storage pipeline's own patience, products still not stored are lost.
        self.storage_patience = settings.getfloat("MONGO_RETRY_TIMEOUT") + 60
        self.poll_interval = settings.getfloat("TMAPI_QUEUE_POLL_INTERVAL")
        self.prefetch = settings.getint("TMAPI_QUEUE_PREFETCH")
        if self.poll_interval <= 0 or self.max_idle < 0 or self.prefetch < 1:
            raise ClusterSettingsError("TMAPI_QUEUE_POLL_INTERVAL must be positive, "
                                       "TMAPI_QUEUE_PREFETCH at least 1 and "
                                       "MAX_IDLE_TIME_BEFORE_CLOSE not negative")
        self._buffer: deque[Request] = deque()
        self._injecting: Request | None = None
        self._pages: dict[str, _Page] = {}
        self._items: dict[int, tuple[ProductPage, str]] = {}
        self._ops: deque[_Op] = deque()
        self._ops_added = asyncio.Event()
        self._ops_done = asyncio.Event()
        self._wanted = asyncio.Event()
        self._popping = False
        #: Set at close: the tasks' loops end by it too, since a cancellation can be swallowed
        #: inside a library call on the way (seen as a worker that never exited).
        self._closing = False
        self._writer_closing = False
        self._rate = Rate()
        #: Categories of the unfiltered queries this worker took pages of: the crawl's end
        #: tells the complete ones among all workers' (``status.read_totals``).
        self._categories: set[int] = set()
        self._started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._marking: asyncio.Task[None] | None = None
        self._idle_since: float | None = None
        #: Why this worker stops, once it decided to: no new work is taken after that.
        self._stopping: str | None = None
        self._open_error: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> DistributedScheduler:
        scheduler = cls(crawler, Cluster.of(crawler))
        connect = crawler.signals.connect
        connect(scheduler.page_parsed, signal=tmapi_signals.page_parsed)
        if _stores_items(crawler.settings):
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

    # Opening and closing.

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    async def _open(self, spider: Spider) -> None:
        """Join the cluster crawl (a worker given arguments may start a new one) and register.

        A failure is reported when the spider opened: Scrapy 2.19 skips opening the item
        pipelines when ``open`` raises, and then fails closing them.
        """
        self.spider = spider
        cluster = self.cluster
        try:
            self.crawl_id, fresh = await cluster.begin_crawl(
                renew=bool(getattr(spider, "arguments", None)),
                worker_info=self._info("running"))
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
        self.queue = cluster.queue(self.crawl_id, self.worker_id)
        self.stats.set_value(stats_keys.WORKER_ID, self.worker_id)
        logger.info("%s cluster crawl %s at %s as worker %s",
                    "Started" if fresh else "Joined", self.crawl_id,
                    redact_url(cluster.url), self.worker_id)
        self._writer = asyncio.ensure_future(self._write())

    def spider_opened(self) -> None:
        """Take work only now: the item pipelines are open."""
        if self._open_error is not None:
            self._stop(self._open_error)
            return
        self._tasks = [asyncio.ensure_future(self._fetch()),
                       asyncio.ensure_future(self._keep())]

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    async def _close(self, reason: str) -> None:
        """Finish the writes, give back what this worker did not finish, and say it left."""
        self._closing = True
        self._wanted.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._marking is not None:
            await self._marking
        if self.queue is None or self._writer is None:
            return
        lost = self._stopping == REDIS_STATE_LOST
        if not lost:
            # A page whose answer is spooled but not stored stays counted as delivered, so
            # that the worker it goes to next looks its answer up instead of paying again.
            spool = Spool.of(self.crawler)
            paid = {lease for lease, page in self._pages.items()
                    if spool.holds_unrecorded(page.key)}
            self._give_back(sorted(paid), counted=True, reason="shutdown")
            self._give_back([lease for lease in self._pages if lease not in paid],
                            counted=False, reason="shutdown")
            self._pages.clear()
            self._items.clear()
            self._buffer.clear()
            # The others take this worker's leases back once its heartbeat expired anyway.
            await wait_set(self._ops_done, self.cluster.heartbeat_ttl)
        self._writer_closing = True
        self._ops_added.set()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        if self._ops and not lost:
            logger.error("Redis: %d writes did not reach it; the other workers will take back "
                         "this worker's unfinished entries once its heartbeat expires",
                         len(self._ops))
        if not lost:
            with contextlib.suppress(redis.RedisError, CrawlGone):
                await self.cluster.exit(self.crawl_id or "",
                                        self._info("exited", finish_reason=reason),
                                        self._snapshot("exited"))

    def _stop(self, reason: str) -> None:
        """Stop taking work and close the crawl with ``reason``, once."""
        if self._stopping is None:
            self._stopping = reason
            close_spider(self.crawler, reason)

    # What Scrapy calls.

    def has_pending_requests(self) -> bool:
        return bool(self._buffer)

    def enqueue_request(self, request: Request) -> bool:
        if request is self._injecting:  # leased by the fetcher, handed in by engine.crawl
            self._buffer.append(request)
            self._injecting = None
            return True
        if self.queue is None or self._stopping is not None:
            return False
        if META_KEY not in request.meta:
            logger.error("Not an API page, so it cannot be queued for the cluster: %s", request)
            return False
        self._write_op(_Op("push", push=page_push(request, self.cluster.dupefilter),
                           request=request))
        return True

    def next_request(self) -> Request | None:
        if len(self._buffer) <= self.prefetch // 2:
            self._wanted.set()
        if not self._buffer:
            return None
        self._idle_since = None
        self.stats.inc_value("scheduler/dequeued/redis")
        return self._buffer.popleft()

    # The fetcher.

    async def _fetch(self) -> None:
        """Keep the local buffer filled from the shared queue."""
        assert self.queue is not None
        outage = Outage("taking work from the shared queue")
        while self._stopping is None and not self._closing:
            self._wanted.clear()
            room = self.prefetch - len(self._buffer)
            if room <= 0:
                await self._wanted.wait()
                continue
            self._popping = True
            popping = asyncio.ensure_future(self.queue.pop(room))
            try:
                leased = await asyncio.shield(popping)
            except asyncio.CancelledError:
                await self._return_popped(popping)
                raise
            except CrawlGone:
                self._state_lost()
                return
            except redis.RedisError as exc:
                await outage.failed(exc)
                continue
            finally:
                self._popping = False
            outage.succeeded()
            for entry in leased:
                self._admit(entry)
            if not leased:
                await wait_set(self._wanted, self.poll_interval)

    async def _return_popped(self, popping: asyncio.Future[list[Leased]]) -> None:
        """Closing while Redis leased entries to this worker: give them back, not strand them
        as leases of a worker that left (``in_flight_lost`` until its heartbeat expires)."""
        try:
            leased = await popping
        except (CrawlGone, redis.RedisError):
            return
        self._give_back([entry.id for entry in leased], counted=False, reason="shutdown")

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
            self._write_op(_Op("fail", ids=[lease], reason=reason))
            return
        assert self.spider is not None
        if not context.query.filters():
            self._categories.add(context.query.cat_id)
        request = self.spider.page_request(context)
        request.meta[LEASE_META] = lease
        if leased.deliveries > 1:  # a worker that had it may have paid for it, then died
            Spool.of(self.crawler).may_hold(context.key)
        self._pages[lease] = _Page(
            memo=self.cluster.keys.frontier_page(self.crawl_id or "", context.key),
            key=context.key)
        self._injecting = request
        self.crawler.engine.crawl(request)
        if self._injecting is request:  # a request_scheduled handler dropped it
            self._injecting = None
            self._forget([lease])
            self._give_back([lease], counted=True, reason="dropped")

    # The writer.

    def _write_op(self, op: _Op) -> None:
        self._ops.append(op)
        self._ops_done.clear()
        self._ops_added.set()

    async def _write(self) -> None:
        """Apply the writes in order; retried as they are until Redis answers (each is
        idempotent: an entry seen is not queued again, a lease is released once)."""
        outage = Outage("writing the crawl's progress")
        while not self._writer_closing:
            if not self._ops:
                self._ops_done.set()
                self._ops_added.clear()
                await self._ops_added.wait()
                continue
            kind = self._ops[0].kind
            batch = [self._ops[0]]
            if kind in ("push", "ack"):
                batch = []
                for op in self._ops:
                    if op.kind != kind or len(batch) == 500:
                        break
                    batch.append(op)
            try:
                await self._apply(kind, batch)
            except CrawlGone:
                self._ops.clear()
                self._ops_done.set()
                self._state_lost()
                return
            except redis.RedisError as exc:
                await outage.failed(exc)
                continue
            outage.succeeded()
            for _ in batch:
                self._ops.popleft()

    async def _apply(self, kind: str, batch: list[_Op]) -> None:
        queue = self.queue
        assert queue is not None
        if kind == "push":
            added = await queue.push([op.push for op in batch if op.push is not None])
            for op, queued in zip(batch, added, strict=True):
                if queued:
                    self.stats.inc_value("scheduler/enqueued/redis")
                else:
                    self._dropped(op.request)
            self._wanted.set()
        elif kind == "ack":
            ids = [i for op in batch for i in op.ids]
            products = [n for op in batch for n in op.products]
            memos = [m for op in batch for m in op.memos]
            acked = await queue.ack(ids, self._snapshot("running"), products, memos)
            self.stats.inc_value(stats_keys.DISTRIBUTED_ACKED, acked)
            if acked < len(ids):
                self.stats.inc_value(stats_keys.DISTRIBUTED_RECLAIMED, len(ids) - acked)
        elif kind == "fail":
            op = batch[0]
            await queue.fail(op.ids[0], op.reason, self._snapshot("running"),
                             op.memos[0] if op.memos else None)
        else:
            op = batch[0]
            requeued, _ = await queue.give_back(op.ids, counted=op.counted, reason=op.reason)
            if op.reason == "shutdown" and requeued:
                self.stats.inc_value(stats_keys.DISTRIBUTED_GIVEN_BACK, requeued)
                logger.info("Gave %d unfinished requests back to the shared queue", requeued)

    def _dropped(self, request: Request | None) -> None:
        """A duplicate: what Scrapy's engine does when a scheduler refuses a request."""
        if request is None:
            return
        self.cluster.dupefilter.log(request, self.spider)
        self.stats.inc_value("dupefilter/filtered")
        self.crawler.signals.send_catch_log(signals.request_dropped, request=request,
                                            spider=self.spider)

    def _snapshot(self, state: str) -> str:
        """This worker's progress counters, as ``scrapy status`` adds them up, with the losses
        it noticed, which the crawl's end reads to tell the categories seen whole."""
        stats = self.stats.get_stats()
        progress = Progress.from_stats(stats)
        self._rate.add(time.monotonic(), progress.pages_done)
        return json.dumps({**asdict(progress), "rate": self._rate.per_second(),
                           "state": state, "crawl_id": self.crawl_id, **losses(stats),
                           "categories": sorted(self._categories),
                           "losses": [loss_to_dict(loss)
                                      for loss in Completeness.of(self.crawler).losses()]})

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
        page.products = sum(len(item.products) for item in items)
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
        if leases:
            pages = [self._pages.get(lease) or _Page() for lease in leases]
            self._forget(leases)
            self._write_op(_Op("ack", ids=leases, products=[page.products for page in pages],
                               memos=[page.memo for page in pages]))

    def _fail(self, lease: str, reason: str) -> None:
        page = self._pages.get(lease)
        self._forget([lease])
        self._write_op(_Op("fail", ids=[lease], reason=reason,
                           memos=[page.memo] if page and page.memo else []))
        self.stats.inc_value(stats_keys.DISTRIBUTED_FAILED)

    def _give_back(self, leases: list[str], *, counted: bool, reason: str) -> None:
        if leases:
            self._write_op(_Op("give_back", ids=leases, counted=counted, reason=reason))

    def _forget(self, leases: list[str]) -> None:
        gone = set(leases)
        for lease in gone:
            self._pages.pop(lease, None)
        for key in [k for k, (_, lease) in self._items.items() if lease in gone]:
            del self._items[key]

    # The keeper: heartbeats, dead workers, lost state, the end of the crawl.

    def spider_idle(self) -> None:
        """The keeper decides when this worker closes: until then it stays."""
        if self._stopping is None:
            raise DontCloseSpider

    async def _keep(self) -> None:
        assert self.crawl_id is not None
        outage = Outage("heartbeat")
        while self._stopping is None and not self._closing:
            try:
                census = await self.cluster.heartbeat(self.crawl_id, self._info("running"))
                await self._reap(census)
                completion = await self._idle_check(census)
            except CrawlGone:
                self._state_lost()
                return
            except redis.RedisError as exc:
                await outage.failed(exc)
                continue
            outage.succeeded()
            if completion is not None:
                self._end(completion)
                return
            await asyncio.sleep(self.cluster.heartbeat_interval)

    async def _reap(self, census: Census) -> None:
        requeued = failed = 0
        for worker in census.dead_with_leases:
            r, f = await self.cluster.reap(worker)
            requeued, failed = requeued + r, failed + f
        if requeued or failed:
            self.stats.inc_value(stats_keys.DISTRIBUTED_REAPED, requeued)
            logger.warning("Workers %s stopped heartbeating: %d of their requests re-queued, %d "
                           "failed as poison", ", ".join(census.dead_with_leases), requeued, failed)
            self._wanted.set()

    def _locally_idle(self) -> bool:
        engine = self.crawler.engine
        return (not self._buffer and not self._ops and not self._popping and engine is not None
                and engine.scheduler is not None and engine.spider_is_idle())

    async def _idle_check(self, census: Census) -> Completion | None:
        """Complete the crawl after ``MAX_IDLE_TIME_BEFORE_CLOSE`` seconds without work here or
        anywhere in the cluster (late seeds are still taken); None while it is not over."""
        if not self._locally_idle():
            self._idle_since = None
            return None
        await self._give_back_lost()
        if census.complete:
            return await self.cluster.complete(self.crawl_id or "")
        if self._pages or census.busy:
            self._idle_since = None
            return None
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.max_idle:
            return None
        self.stats.set_value(stats_keys.DISTRIBUTED_IDLE, round(now - self._idle_since, 3))
        return await self.cluster.complete(self.crawl_id or "")

    async def _give_back_lost(self) -> None:
        """Return leases whose page can no longer complete in this worker.

        Called while nothing is in progress here: a page never parsed nor failed vanished (a
        component dropped its request), and one whose products are not stored long after the
        storage pipeline would have given up lost them. Both count as a delivery, so an entry
        that always ends that way is failed as poison instead of looping.
        """
        now = time.monotonic()
        lost = {lease for lease, page in self._pages.items()
                if page.items_left is None or now - page.parsed_at > self.storage_patience}
        if not self._pages:
            # Leases Redis holds for this worker that it no longer tracks (an acknowledgement
            # that did not reach Redis): the cluster would wait for them forever.
            assert self.queue is not None
            lost.update(await self.queue.leased_ids())
        if lost:
            self._forget(list(lost))
            self._give_back(list(lost), counted=True, reason="lost_in_worker")
            logger.warning("%d requests ended without their products stored; gave them back",
                           len(lost))

    def _end(self, completion: Completion) -> None:
        if completion.lost:
            self.stats.set_value(stats_keys.DISTRIBUTED_MISSING, completion.missing)
            logger.error("Cluster crawl %s cannot be complete: %d of its queued entries were "
                         "never done nor failed, so Redis lost them (it keeps no append-only "
                         "file?); run `scrapy seed` again to crawl what is missing",
                         self.crawl_id, completion.missing)
            self._stop(REDIS_STATE_LOST)
            return
        logger.info("Cluster crawl %s is complete%s", self.crawl_id,
                    "; this worker finalises it" if completion.finaliser else "")
        self.crawler.signals.send_catch_log(tmapi_signals.crawl_complete,
                                            crawl_id=self.crawl_id,
                                            finaliser=completion.finaliser)
        self._stop(FINISHED)

    def _state_lost(self) -> None:
        """Redis lost the crawl: stop, and leave a mark saying so (never report it finished)."""
        if self._stopping is not None:
            return
        self.cluster.stopping = REDIS_STATE_LOST
        logger.error("Redis lost the state of cluster crawl %s (restarted without persistence, "
                     "or flushed): its queue and leases are gone, so the crawl cannot be "
                     "completed. Stopping; products stored so far stay in MongoDB, and "
                     "`scrapy seed` starts a new crawl", self.crawl_id)
        self._marking = asyncio.ensure_future(self._mark_lost())
        self._stop(REDIS_STATE_LOST)

    async def _mark_lost(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.cluster.mark_lost(self.crawl_id or "", "restart")

    # Progress and totals.

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
