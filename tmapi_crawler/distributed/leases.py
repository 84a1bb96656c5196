"""The leases of one worker: what it holds of the shared queue, and the ordered writer.

An entry popped from the shared queue stays leased to this worker until its page is parsed
and every product of it stored (``tmapi_crawler.signals``), or until it failed for good; a
clean stop gives the rest back. What the crawl produced goes to Redis through one task, in
order: new entries, acknowledgements, failures, give-backs. Order matters: a page's follow-up
entries are queued before its lease is acknowledged, so a worker dying at any point loses
nothing. Nothing here waits on Redis for Scrapy: every write is queued and applied by the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from scrapy import signals

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import STOPPING_OUTCOMES
from tmapi_crawler.distributed.cluster import Outage
from tmapi_crawler.distributed.queue import CrawlGone
from tmapi_crawler.frontier.context import LEASE_META

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response
    from twisted.python.failure import Failure

    from tmapi_crawler.distributed.cluster import Cluster
    from tmapi_crawler.distributed.queue import Push, SharedQueue
    from tmapi_crawler.items import ProductPage

logger = logging.getLogger(__name__)

#: Page failures that are not the page's fault: the crawl is stopping (quota, bad token,
#: shutdown). Such pages stay leased and go back to the queue, for a later resume.
RESUMABLE_FAILURES = frozenset(
    {"not_sent"}
    | {str(code) for code, error in api.ERROR_CODES.items() if error.outcome in STOPPING_OUTCOMES}
)
#: Acknowledgements and pushes go out in batches of at most this many.
BATCH = 500


async def on_redis(what: str, step: Callable[[], Awaitable[bool]], *,
                   running: Callable[[], bool], lost: Callable[[], None]) -> None:
    """Run ``step`` while ``running()`` and until it returns False: the loop of every task that
    works on the shared crawl. A Redis error is retried at the pace of an ``Outage``; a crawl
    gone from Redis ends the loop, and ``lost`` is told."""
    outage = Outage(what)
    while running():
        try:
            more = await step()
        except CrawlGone:
            lost()
            return
        except redis.RedisError as exc:
            await outage.failed(exc)
            continue
        outage.succeeded()
        if not more:
            return


@dataclass(slots=True)
class Page:
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
class Op:
    """One write for the writer: ``kind`` is push, ack, fail or give_back."""

    kind: str
    push: Push | None = None
    request: Request | None = None
    ids: list[str] = field(default_factory=list)
    products: list[int] = field(default_factory=list)
    memos: list[str] = field(default_factory=list)
    reason: str = ""
    counted: bool = False


class Leases:
    """The leases this worker holds, the signals that settle them, and their ordered writer.

    ``snapshot(state)`` gives this worker's progress counters, written with acknowledgements
    and failures; ``pushed()`` is told when entries were queued (there may be work to take);
    ``lost()`` when Redis no longer has the crawl.
    """

    def __init__(self, crawler: Crawler, cluster: Cluster, *, snapshot: Callable[[str], str],
                 pushed: Callable[[], None], lost: Callable[[], None]) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.cluster = cluster
        self.queue: SharedQueue | None = None
        self.spider: Spider | None = None
        self.pages: dict[str, Page] = {}
        self._items: dict[int, tuple[ProductPage, str]] = {}
        self._ops: deque[Op] = deque()
        self._added = asyncio.Event()
        self._done = asyncio.Event()
        self._snapshot = snapshot
        self._pushed = pushed
        self._lost = lost
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    def connect(self, *, stores_items: bool) -> None:
        """Settle pages on the crawl's signals. Without the storage pipeline, a page's items
        are done once they passed the item pipelines, stored or not."""
        connect = self.crawler.signals.connect
        connect(self.page_parsed, signal=tmapi_signals.page_parsed)
        if stores_items:
            connect(self.items_stored, signal=tmapi_signals.items_stored)
        else:
            connect(self.item_settled, signal=signals.item_scraped)
        connect(self.page_failed, signal=tmapi_signals.page_failed)
        connect(self.spider_error, signal=signals.spider_error)
        connect(self.item_settled, signal=signals.item_dropped)
        connect(self.item_error, signal=signals.item_error)

    @property
    def writing(self) -> bool:
        """Whether writes are still waiting for Redis."""
        return bool(self._ops)

    def start(self, queue: SharedQueue, spider: Spider) -> None:
        self.queue, self.spider = queue, spider
        self._writer = asyncio.ensure_future(on_redis(
            "writing the crawl's progress", self._write_next,
            running=lambda: not self._closing, lost=self._writer_lost))

    # What the crawl produced.

    def track(self, lease: str, *, memo: str, key: str) -> None:
        """A lease handed to the engine: held until its page is settled."""
        self.pages[lease] = Page(memo=memo, key=key)

    def push(self, push: Push, request: Request) -> None:
        self._write(Op("push", push=push, request=request))

    def page_parsed(self, request: Request, items: list[ProductPage]) -> None:
        lease = request.meta.get(LEASE_META)
        page = self.pages.get(lease or "")
        if lease is None or page is None:
            return
        if not items:
            self.ack([lease])
            return
        page.items_left, page.parsed_at = len(items), time.monotonic()
        page.products = sum(len(item.products) for item in items)
        for item in items:
            self._items[id(item)] = (item, lease)

    def items_stored(self, items: list[ProductPage]) -> None:
        self.ack([lease for item in items if (lease := self._settle(item))])

    def item_settled(self, item: Any) -> None:
        """A pipeline decided not to keep the page (or none stores it): it is done."""
        if lease := self._settle(item):
            self.ack([lease])

    def item_error(self, item: Any) -> None:
        """A pipeline failed on a page: it is not complete, record it as failed."""
        entry = self._items.get(id(item))
        if entry is not None:
            self.fail(entry[1], "item_error")

    def page_failed(self, request: Request, reason: str) -> None:
        lease = request.meta.get(LEASE_META)
        if lease in self.pages and reason not in RESUMABLE_FAILURES:
            self.fail(lease, reason)

    def spider_error(self, failure: Failure, response: Response | None) -> None:
        """The callback raised: retrying the page would raise again."""
        request = getattr(response, "request", None)
        lease = request.meta.get(LEASE_META) if request is not None else None
        if lease in self.pages:
            self.fail(lease, "spider_error")

    def _settle(self, item: Any) -> str | None:
        """Count one product of a page as done; the page's lease when it was the last one."""
        entry = self._items.pop(id(item), None)
        if entry is None:
            return None
        lease = entry[1]
        page = self.pages.get(lease)
        if page is None or page.items_left is None:
            return None
        page.items_left -= 1
        return lease if page.items_left == 0 else None

    # Settling leases.

    def ack(self, leases: list[str]) -> None:
        if leases:
            pages = [self.pages.get(lease) or Page() for lease in leases]
            self.forget(leases)
            self._write(Op("ack", ids=leases, products=[page.products for page in pages],
                           memos=[page.memo for page in pages]))

    def fail(self, lease: str, reason: str, *, counted: bool = True) -> None:
        """Record a lease as failed for good; ``counted``: a page given up on (not an entry
        refused before it became one)."""
        page = self.pages.get(lease)
        self.forget([lease])
        self._write(Op("fail", ids=[lease], reason=reason,
                       memos=[page.memo] if page and page.memo else []))
        if counted:
            self.stats.inc_value(stats_keys.DISTRIBUTED_FAILED)

    def give_back(self, leases: list[str], *, counted: bool, reason: str) -> None:
        if leases:
            self._write(Op("give_back", ids=leases, counted=counted, reason=reason))

    def forget(self, leases: list[str]) -> None:
        gone = set(leases)
        for lease in gone:
            self.pages.pop(lease, None)
        for key in [k for k, (_, lease) in self._items.items() if lease in gone]:
            del self._items[key]

    async def give_back_lost(self, patience: float) -> None:
        """Return leases whose page can no longer complete in this worker.

        Called while nothing is in progress here: a page never parsed nor failed vanished (a
        component dropped its request), and one whose products are not stored ``patience``
        seconds after it was parsed lost them. Both count as a delivery, so an entry that
        always ends that way is failed as poison instead of looping.
        """
        now = time.monotonic()
        lost = {lease for lease, page in self.pages.items()
                if page.items_left is None or now - page.parsed_at > patience}
        if not self.pages:
            # Leases Redis holds for this worker that it no longer tracks (an acknowledgement
            # that did not reach Redis): the cluster would wait for them forever.
            assert self.queue is not None
            lost.update(await self.queue.leased_ids())
        if lost:
            self.forget(list(lost))
            self.give_back(list(lost), counted=True, reason="lost_in_worker")
            logger.warning("%d requests ended without their products stored; gave them back",
                           len(lost))

    def release(self, paid: Callable[[str], bool]) -> None:
        """A clean stop: give back every lease held. A page whose answer is already paid for
        (``paid(key)``: spooled, not stored) stays counted as delivered, so that the worker it
        goes to next looks its answer up instead of paying again."""
        kept = {lease for lease, page in self.pages.items() if paid(page.key)}
        self.give_back(sorted(kept), counted=True, reason="shutdown")
        self.give_back([lease for lease in self.pages if lease not in kept],
                       counted=False, reason="shutdown")
        self.pages.clear()
        self._items.clear()

    # The writer.

    def _write(self, op: Op) -> None:
        self._ops.append(op)
        self._done.clear()
        self._added.set()

    async def flushed(self, timeout: float) -> bool:
        """Wait until every write so far reached Redis; False when ``timeout`` passed first."""
        return await wait_set(self._done, timeout)

    async def close(self) -> int:
        """Stop the writer; how many writes never reached Redis."""
        self._closing = True
        self._added.set()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        return len(self._ops)

    def _writer_lost(self) -> None:
        self._ops.clear()
        self._done.set()
        self._lost()

    async def _write_next(self) -> bool:
        """Apply the next writes in order; retried as they are until Redis answers (each is
        idempotent: an entry seen is not queued again, a lease is released once)."""
        if not self._ops:
            self._done.set()
            self._added.clear()
            await self._added.wait()
            return True
        kind = self._ops[0].kind
        batch = [self._ops[0]]
        if kind in ("push", "ack"):
            batch = []
            for op in self._ops:
                if op.kind != kind or len(batch) == BATCH:
                    break
                batch.append(op)
        await self._apply(kind, batch)
        for _ in batch:
            self._ops.popleft()
        return True

    async def _apply(self, kind: str, batch: list[Op]) -> None:
        queue = self.queue
        assert queue is not None
        if kind == "push":
            added = await queue.push([op.push for op in batch if op.push is not None])
            for op, queued in zip(batch, added, strict=True):
                if queued:
                    self.stats.inc_value("scheduler/enqueued/redis")
                else:
                    self._dropped(op.request)
            self._pushed()
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
