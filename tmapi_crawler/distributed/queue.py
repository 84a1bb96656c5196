"""The shared queue: a reliable priority queue in Redis whose entries are page specs.

Layout and ordering follow scrapy-redis's priority queue (a sorted set scored by -priority;
among equal priorities, lower pages first: ``page_score``), with what a paid API needs on top:
popping *leases* an entry to its worker instead of deleting it, and the entry leaves Redis only
when acknowledged (its page parsed, its products stored), recorded as failed, or given back —
by the worker on a clean stop, or by the others when the worker's heartbeat expired. So a
worker killed mid-crawl loses nothing. Every step is one Lua script (``lua/``), and every
method is a coroutine: the event loop never waits on Redis.

The sorted set holds entry ids (a request fingerprint, or for a page asked for again a
fingerprint made unique), the ``entries`` hash their page specs (``entries.py``), and the
dupefilter every id ever queued in this crawl — which is also how the crawl knows how many
entries it must see done or failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.scripts import Scripts
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.frontier.state import StateLost

if TYPE_CHECKING:
    import redis.asyncio
    from scrapy.http import Request
    from scrapy_redis.dupefilter import RFPDupeFilter

    from tmapi_crawler.distributed.keys import CrawlKeys


class CrawlGone(StateLost):
    """The crawl this worker works for is no longer in Redis: lost, or replaced by a new one."""


@dataclass(frozen=True, slots=True)
class Push:
    """One entry to queue: its id, its sorted-set score (``page_score``) and its page spec."""

    id: str
    score: float
    entry: str


@dataclass(frozen=True, slots=True)
class Leased:
    """A popped entry: leased to this worker until acknowledged, failed or given back.

    ``known`` is false for an id the crawl's dupefilter never saw: no worker queued it;
    ``deliveries``: how many times the entry was handed out, this one included (more than one:
    a worker that had it may have paid for its page, ``storage.spool``).
    """

    id: str
    entry: bytes
    known: bool
    deliveries: int


#: Pages per priority step in a score: a page's number only orders pages of equal priority.
PAGE_ORDER_SPAN: Final = 1_000_000


def page_score(priority: int, page: int) -> float:
    """The sorted-set score of a page: -priority, and among equal priorities lower pages first.

    Ties used to pop in the order of their ids, fingerprints: at random. A query's page 2 could
    wait to the crawl's end while holding a place in the query's window, so that the query's
    last pages were planned only then, one answer after another, while the other permits idled
    (B5 in BENCHMARKS.md: the spread of a round's throughput came mostly from there).
    """
    return -priority + min(page, PAGE_ORDER_SPAN - 1) / PAGE_ORDER_SPAN


def page_push(request: Request, dupefilter: RFPDupeFilter) -> Push:
    """What queues an API page request: its page spec, under its fingerprint (made unique for
    a page asked for again, ``dont_filter``, which must be queued although it was seen)."""
    fingerprint = dupefilter.request_fingerprint(request)
    context = PageContext.from_dict(request.meta[META_KEY])
    return Push(
        f"{fingerprint}.{secrets.token_hex(4)}" if request.dont_filter else fingerprint,
        page_score(request.priority, context.page),
        entries.encode(context, request.priority),
    )


class SharedQueue:
    """One crawl's queue, for one worker (``worker`` None: a producer that only pushes)."""

    def __init__(self, client: redis.asyncio.Redis, keys: CrawlKeys, crawl_id: str,
                 worker: str | None = None, *, max_deliveries: int = 5) -> None:
        self.client = client
        self.keys = keys
        self.crawl_id = crawl_id
        self.worker = worker
        self.max_deliveries = max_deliveries
        self.scripts = Scripts(client)

    @property
    def leases_key(self) -> str:
        if self.worker is None:
            raise RuntimeError("a queue opened without a worker id cannot lease entries")
        return self.keys.leases(self.worker)

    async def push(self, pushes: Sequence[Push]) -> list[bool]:
        """Queue entries not seen before in this crawl; for each, whether it was queued."""
        if not pushes:
            return []
        args: list[str | int] = [self.crawl_id]
        for push in pushes:
            args += [push.id, push.score, push.entry]
        keys = self.keys
        result = await self.scripts["push"](
            keys=[keys.crawl, keys.dupefilter, keys.queue, keys.entries], args=args)
        if not result[0]:
            raise CrawlGone(self.crawl_id)
        return [bool(added) for added in result[1:]]

    async def pop(self, count: int) -> list[Leased]:
        """Lease up to ``count`` of the most urgent entries to this worker."""
        keys = self.keys
        result = await self.scripts["pop"](
            keys=[keys.crawl, keys.queue, keys.entries, self.leases_key, keys.deliveries,
                  keys.dupefilter],
            args=[self.crawl_id, count])
        if not result[0]:
            raise CrawlGone(self.crawl_id)
        return [Leased(result[i].decode(), result[i + 1], bool(result[i + 2]), result[i + 3])
                for i in range(1, len(result), 4)]

    async def ack(self, ids: Sequence[str], snapshot: str, products: Sequence[int] = (),
                  memos: Sequence[str] = ()) -> int:
        """Pages done, with this worker's progress counters; how many were still leased here.

        ``products``: how many products each page carried (none given: 0), added to the crawl's
        sightings for the pages still leased here; ``memos``: the key of each page's decision
        (``RedisState.for_page``), dropped with its lease. A lease the others took back (this worker
        was thought dead) is not counted: another worker may fetch that page again, and
        storing it again changes nothing.
        """
        keys = self.keys
        counts = list(products) or [0] * len(ids)
        if len(counts) != len(ids) or (memos and len(memos) != len(ids)):
            raise ValueError("one product count (and memo, if any) per acknowledged page")
        done = await self.scripts["ack"](
            keys=[keys.crawl, self.leases_key, keys.deliveries, keys.entries, keys.done,
                  keys.progress, keys.sightings, *memos],
            args=[self.crawl_id, self.worker, snapshot,
                  *(part for pair in zip(ids, counts, strict=True) for part in pair)])
        if done < 0:
            raise CrawlGone(self.crawl_id)
        return int(done)

    async def fail(self, lease: str, reason: str, snapshot: str = "", memo: str | None = None
                   ) -> bool:
        """Record a page given up on for good (or an entry refused), with its entry, this
        worker's progress counters when given, and dropping its decision's ``memo``."""
        keys = self.keys
        failed = await self.scripts["fail"](
            keys=[keys.crawl, self.leases_key, keys.deliveries, keys.entries, keys.failed,
                  keys.progress, *([memo] if memo else [])],
            args=[self.crawl_id, lease, reason, self.worker, snapshot])
        if failed < 0:
            raise CrawlGone(self.crawl_id)
        return bool(failed)

    async def give_back(self, ids: Iterable[str], *, counted: bool, reason: str
                        ) -> tuple[int, int]:
        """Return leases to the queue: (re-queued, failed as poison). A counted give-back is a
        delivery: after ``max_deliveries`` of them the entry is failed instead."""
        ids = list(ids)
        if not ids:
            return 0, 0
        keys = self.keys
        requeued, failed = await self.scripts["give_back"](
            keys=[self.leases_key, keys.deliveries, keys.failed, keys.queue, keys.entries],
            args=[int(counted), self.max_deliveries, self.worker, reason, *ids])
        return int(requeued), int(failed)

    async def leased_ids(self) -> list[str]:
        return [lease.decode() for lease in await self.client.hkeys(self.leases_key)]

    async def known(self) -> int:
        """How many entries this crawl ever queued (its dupefilter): none, and it had no work."""
        return int(await self.client.scard(self.keys.dupefilter))
