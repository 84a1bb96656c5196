"""The distributed scheduler in-process, on its own asyncio loop and a real redis-server: what
it queues and what it refuses to take from the queue; then each of its parts alone — the
leases and their ordered writer (``leases.py``), the keeper (``keeper.py``: heartbeats, dead
workers, the crawl's end, lost state) and the adapter's buffer and request factory. Real
workers crawling together are tested in ``test_cluster_crawls.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import redis
from scrapy import Request, signals
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.test import get_crawler

from tests.cluster import cluster_settings
from tests.crawling import TOKEN
from tests.servers import RedisProcess
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED, REDIS_STATE_LOST, stop_reason
from tmapi_crawler.commands.crawl import summary_line
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.entries import decode as decode_entry
from tmapi_crawler.distributed.keeper import Keeper
from tmapi_crawler.distributed.leases import LEASE_META, Leases
from tmapi_crawler.distributed.queue import SharedQueue, page_push
from tmapi_crawler.distributed.scheduler import DistributedScheduler
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import priority
from tmapi_crawler.items import ProductItem, ProductPage
from tmapi_crawler.plan import Query
from tmapi_crawler.spiders.category_items import CategoryItemsSpider

KEY = "tmapi:category_items"
IDLE = stats_keys.DISTRIBUTED_IDLE


async def until(condition: Callable[[], Any], timeout: float = 30) -> None:
    """Wait for an event; the timeout only keeps a broken build from hanging."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_the_queue_gets_page_specs_and_the_worker_refuses_anything_else(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    # No reactor: the test drives the scheduler on its own asyncio loop.
    crawler = get_crawler(CategoryItemsSpider, dict(cluster_settings(
        redis_server.uri, TWISTED_REACTOR_ENABLED=False, ITEM_PIPELINES={})))
    spider = CategoryItemsSpider.from_crawler(crawler)
    scheduler = DistributedScheduler.from_crawler(crawler)
    dropped: list[Request] = []

    def request_dropped(request: Request) -> None:
        dropped.append(request)

    crawler.signals.connect(request_dropped, signal=signals.request_dropped)
    context = PageContext(Query(cat_id=1), page=2, last=3)

    async def scenario() -> None:
        await maybe_deferred_to_future(scheduler.open(spider))
        request = spider.page_request(context)
        request.meta["proxy"] = "http://127.0.0.1:9"  # what a component added in this worker
        request.headers["X-Extra"] = "1"
        assert scheduler.enqueue_request(request)
        await until(lambda: redis_client.hlen(f"{KEY}:entries") == 1)
        assert scheduler.enqueue_request(spider.page_request(context))  # a duplicate...
        await until(lambda: dropped)  # ...dropped once Redis said so, as Scrapy would
        # Someone else's entry, alone in line (a legitimate one needs an engine to go to).
        redis_client.delete(f"{KEY}:requests")
        redis_client.sadd(f"{KEY}:dupefilter", "forged")
        redis_client.zadd(f"{KEY}:requests", {"forged": -100})
        redis_client.hset(f"{KEY}:entries", "forged", json.dumps(
            {"url": "http://127.0.0.1:9/", "meta": {"proxy": "http://127.0.0.1:9"}}))
        scheduler.spider_opened()
        await until(lambda: redis_client.hexists(f"{KEY}:failed", "forged"))
        await maybe_deferred_to_future(scheduler.close("shutdown"))

    asyncio.run(scenario())
    entries = [json.loads(v) for k, v in redis_client.hgetall(f"{KEY}:entries").items()
               if k != b"forged"]
    assert entries == [{"page": context.to_dict(), "priority": priority(context)}]
    assert [r.url for r in dropped] == [spider.page_request(context).url]
    stats = crawler.stats.get_stats()
    assert stats["scheduler/enqueued/redis"] == 1
    assert stats["dupefilter/filtered"] == 1
    assert stats["tmapi/distributed/refused"] == 1
    failure = json.loads(redis_client.hget(f"{KEY}:failed", "forged"))
    assert failure["reason"].startswith("refused: expected exactly the keys page and priority")
    assert "proxy" in failure["entry"]  # kept for inspection, never used
    assert not scheduler.has_pending_requests()


# The parts, each on its own: the leases and their writer, the keeper, the adapter's buffer.


class Part:
    """One worker's parts in-process, on a real redis-server: its cluster handle, a crawl it
    joined, and its queue; ``seed`` queues page specs as ``scrapy seed`` would."""

    def __init__(self, redis_uri: str, **settings: Any) -> None:
        self.crawler = get_crawler(CategoryItemsSpider, dict(cluster_settings(
            redis_uri, TWISTED_REACTOR_ENABLED=False, ITEM_PIPELINES={}, EXTENSIONS={},
            TMAPI_TOKEN=TOKEN, **settings)))
        self.spider = CategoryItemsSpider.from_crawler(self.crawler)
        self.cluster = Cluster(self.crawler.settings, "category_items")
        self.keys = self.cluster.keys
        self.crawl_id = ""
        self.queue: SharedQueue | None = None

    async def join(self) -> SharedQueue:
        self.crawl_id, _ = await self.cluster.begin_crawl(
            renew=False, worker_info=self.cluster.worker_info("running"))
        self.queue = self.cluster.queue(self.crawl_id, self.cluster.worker_id)
        return self.queue

    async def seed(self, *pages: int) -> list[PageContext]:
        """Queue pages of category 1; their contexts, in the order the queue hands them out."""
        assert self.queue is not None
        contexts = [PageContext(Query(cat_id=1), page=p, last=len(pages)) for p in pages]
        producer = self.cluster.queue(self.crawl_id, None)
        await producer.push([page_push(self.spider.page_request(c), self.cluster.dupefilter)
                             for c in contexts])
        return contexts

    def leases(self, **callbacks: Callable[..., Any]) -> Leases:
        return Leases(self.crawler, self.cluster, **{
            "snapshot": lambda state: json.dumps({"state": state}),
            "pushed": lambda: None, "lost": lambda: None, **callbacks})

    def stat(self, key: str) -> Any:
        return self.crawler.stats.get_value(key)


def leased(client: redis.Redis, part: Part) -> set[str]:
    return {k.decode() for k in client.hkeys(part.keys.leases(part.cluster.worker_id))}


def lease_request(part: Part, context: PageContext, lease: str) -> Request:
    request = part.spider.page_request(context)
    request.meta[LEASE_META] = lease
    return request


def test_the_writer_queues_a_pages_follow_ups_before_it_acknowledges_the_page(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part = Part(redis_server.uri)
    held_when_pushed: list[bool] = []

    async def scenario() -> None:
        queue = await part.join()
        (context,) = await part.seed(1)
        (entry,) = await queue.pop(1)
        leases = part.leases(pushed=lambda: held_when_pushed.append(
            entry.id in leased(redis_client, part)))
        leases.start(queue, part.spider)
        leases.track(entry.id, memo=part.keys.frontier_page(part.crawl_id, context.key),
                     key=context.key)
        redis_client.hset(part.keys.frontier_page(part.crawl_id, context.key), "1", "x")
        # Produced together: the follow-up, then the page's end.
        follow_up = PageContext(Query(cat_id=1), page=2, last=2)
        request = part.spider.page_request(follow_up)
        leases.push(page_push(request, part.cluster.dupefilter), request)
        leases.page_parsed(lease_request(part, context, entry.id), [])
        assert leases.writing
        assert await leases.flushed(30)
        assert await leases.close() == 0
        await part.cluster.aclose()

    asyncio.run(scenario())
    assert held_when_pushed == [True]  # the page was still leased when its follow-up queued
    assert redis_client.zcard(part.keys.queue) == 1
    assert leased(redis_client, part) == set()
    assert int(redis_client.get(part.keys.done)) == 1
    assert part.stat("tmapi/distributed/acked") == 1
    assert part.stat("scheduler/enqueued/redis") == 1
    assert not redis_client.exists(part.keys.frontier_page(part.crawl_id, "1#1"))
    progress = json.loads(redis_client.hget(part.keys.progress, part.cluster.worker_id))
    assert progress == {"state": "running"}  # the snapshot travels with the acknowledgement


def test_a_page_is_acknowledged_once_every_product_is_stored_and_failed_for_good_once(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part = Part(redis_server.uri)

    async def scenario() -> list[str]:
        queue = await part.join()
        stored, failing, stopping = await part.seed(1, 2, 3)
        entries_ = {e.id: e for e in await queue.pop(3)}
        ids = [page_push(part.spider.page_request(c), part.cluster.dupefilter).id
               for c in (stored, failing, stopping)]
        assert set(ids) == set(entries_)
        leases = part.leases()
        leases.start(queue, part.spider)
        for context, lease in zip((stored, failing, stopping), ids, strict=True):
            leases.track(lease, memo="", key=context.key)
        pages = [ProductPage(products=[ProductItem(raw={}, context=None)] * 3)  # type: ignore[arg-type]
                 for _ in range(2)]
        leases.page_parsed(lease_request(part, stored, ids[0]), pages)
        leases.items_stored(pages[:1])
        assert await leases.flushed(30)
        assert ids[0] in leased(redis_client, part)  # one of its two items is not stored yet
        leases.items_stored(pages[1:])
        leases.page_failed(lease_request(part, failing, ids[1]), "500")
        leases.page_failed(lease_request(part, stopping, ids[2]), "not_sent")  # resumable
        assert await leases.flushed(30)
        await leases.close()
        await part.cluster.aclose()
        return ids

    ids = asyncio.run(scenario())
    assert leased(redis_client, part) == {ids[2]}  # kept, for a resume
    assert int(redis_client.get(part.keys.done)) == 1
    assert int(redis_client.get(part.keys.sightings)) == 6
    assert json.loads(redis_client.hget(part.keys.failed, ids[1]))["reason"] == "500"
    assert part.stat("tmapi/distributed/acked") == 1
    assert part.stat("tmapi/distributed/failed") == 1


def test_a_clean_stop_gives_back_every_lease_and_a_paid_page_stays_delivered(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part = Part(redis_server.uri)

    async def scenario() -> dict[str, str]:
        queue = await part.join()
        paid, unpaid = await part.seed(1, 2)
        by_key: dict[str, str] = {}
        for entry in await queue.pop(2):
            context, _ = decode_entry(entry.entry)
            by_key[context.key] = entry.id
        leases = part.leases()
        leases.start(queue, part.spider)
        for context in (paid, unpaid):
            leases.track(by_key[context.key], memo="", key=context.key)
        leases.release(lambda key: key == paid.key)
        assert not leases.pages
        assert await leases.flushed(30)
        await leases.close()
        await part.cluster.aclose()
        return by_key

    by_key = asyncio.run(scenario())
    assert leased(redis_client, part) == set()
    assert redis_client.zcard(part.keys.queue) == 2
    deliveries = {k.decode(): int(v) for k, v in redis_client.hgetall(part.keys.deliveries).items()}
    paid_id = by_key[PageContext(Query(cat_id=1), page=1, last=2).key]
    assert deliveries.get(paid_id) == 1  # the next worker looks its answer up
    assert sum(deliveries.values()) == 1
    assert part.stat("tmapi/distributed/given_back") == 2


def keeper_of(part: Part, leases: Leases, *, idle: bool = True,
              woken: asyncio.Event | None = None) -> Keeper:
    return Keeper(part.crawler, part.cluster, leases, locally_idle=lambda: idle,
                  wake=woken.set if woken is not None else lambda: None)


async def keep(part: Part, keeper: Keeper, queue: SharedQueue) -> None:
    """Run the keeper until it decided this worker's end (an engine that never opened a
    spider: closing the crawl only records its reason)."""
    part.crawler.engine = part.crawler._create_engine()
    keeper.crawl_id = part.crawl_id
    keeper.start(queue)
    assert keeper._task is not None
    await asyncio.wait_for(keeper._task, 30)


def test_the_keeper_takes_back_a_dead_workers_leases(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part, other = Part(redis_server.uri), Part(redis_server.uri)
    census: list[Any] = []

    async def scenario() -> None:
        await other.join()
        queue = await part.join()
        await part.seed(1, 2)
        assert other.queue is not None
        assert len(await other.queue.pop(2)) == 2
        # The other worker died: its heartbeat expired.
        redis_client.delete(part.keys.alive(other.cluster.worker_id))
        woken = asyncio.Event()
        keeper = keeper_of(part, part.leases(), idle=False, woken=woken)
        keeper.crawl_id = part.crawl_id
        keeper.start(queue)
        await asyncio.wait_for(woken.wait(), 30)  # the fetcher is told there is work again
        census.append(await part.cluster.heartbeat(part.crawl_id, keeper.info("running")))
        await keeper.close()
        assert keeper.stopping is None
        await part.cluster.aclose()
        await other.cluster.aclose()

    asyncio.run(scenario())
    assert redis_client.zcard(part.keys.queue) == 2
    assert leased(redis_client, other) == set()
    assert part.stat("tmapi/distributed/reaped") == 2
    assert census[0].dead_with_leases == []
    assert census[0].queued == 2
    workers = json.loads(redis_client.hget(part.keys.workers, part.cluster.worker_id))
    assert (workers["state"], workers["crawl_id"]) == ("running", part.crawl_id)


def test_the_keeper_ends_every_worker_at_once_when_the_crawl_is_complete(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    """No wait of MAX_IDLE_TIME_BEFORE_CLOSE once the crawl's work is done: the first idle
    worker completes it, the next one sees it complete; both close ``finished``."""
    # An hour of idle wait: a keeper that waited it would fail the test's timeout.
    first, second = (Part(redis_server.uri, MAX_IDLE_TIME_BEFORE_CLOSE=3600) for _ in "12")
    completions: list[tuple[str, bool]] = []

    def crawl_complete(crawl_id: str, finaliser: bool) -> None:
        completions.append((crawl_id, finaliser))

    async def scenario() -> None:
        queue = await first.join()
        await second.join()
        (context,) = await first.seed(1)
        (entry,) = await queue.pop(1)
        leases = first.leases()
        leases.start(queue, first.spider)
        leases.track(entry.id, memo="", key=context.key)
        leases.page_parsed(lease_request(first, context, entry.id), [])
        assert await leases.flushed(30)
        for part in (first, second):
            part.crawler.signals.connect(crawl_complete, signal=tmapi_signals.crawl_complete)
            assert part.queue is not None
            if part is second:
                leases = part.leases()
                leases.start(part.queue, part.spider)
            keeper = keeper_of(part, leases)
            await keep(part, keeper, part.queue)
            assert keeper.stopping == FINISHED
            assert stop_reason(part.crawler) == FINISHED
            await leases.close()
            await part.cluster.aclose()

    asyncio.run(scenario())
    assert completions == [(first.crawl_id, True), (first.crawl_id, False)]
    assert redis_client.hget(first.keys.crawl, "completed_by").decode() == (
        first.cluster.worker_id)
    assert (first.stat(IDLE), second.stat(IDLE)) == (None, None)


def test_a_crawl_that_never_had_work_waits_for_a_late_seed_then_ends(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part = Part(redis_server.uri, MAX_IDLE_TIME_BEFORE_CLOSE=0)

    async def scenario() -> None:
        queue = await part.join()
        leases = part.leases()
        leases.start(queue, part.spider)
        keeper = keeper_of(part, leases)
        await keep(part, keeper, queue)
        assert keeper.stopping == FINISHED
        await part.cluster.aclose()

    asyncio.run(scenario())
    assert part.stat(IDLE) is not None  # it waited (the setting: 0 s), and says how long
    assert redis_client.hexists(part.keys.crawl, "completed_at")


def test_a_workers_wait_before_closing_is_no_part_of_the_crawls_duration() -> None:
    stats = {"finish_reason": "finished", "elapsed_time_seconds": 12.5, IDLE: 2.25}
    assert " finished in 10.2 s:" in summary_line(stats, None)


def test_the_keeper_stops_the_worker_when_redis_lost_the_crawl(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    part = Part(redis_server.uri)

    async def scenario() -> None:
        queue = await part.join()
        redis_client.delete(part.keys.crawl)  # a restart without persistence
        leases = part.leases()
        leases.start(queue, part.spider)
        keeper = keeper_of(part, leases)
        await keep(part, keeper, queue)
        await keeper.close()  # waits for the mark it leaves
        assert keeper.stopping == REDIS_STATE_LOST
        await part.cluster.aclose()

    asyncio.run(scenario())
    assert part.cluster.stopping == REDIS_STATE_LOST  # the limiter grants no more permits
    assert stop_reason(part.crawler) == REDIS_STATE_LOST
    crawl = {k.decode(): v.decode() for k, v in redis_client.hgetall(part.keys.crawl).items()}
    assert (crawl["id"], crawl["lost"]) == (part.crawl_id, "restart")


def test_the_buffer_is_filled_through_the_factory_and_given_back_at_close(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    """The adapter: prefetched leases in its buffer, each request rebuilt by the factory it was
    handed, refilled as Scrapy takes them, and everything unfinished given back at close."""
    part = Part(redis_server.uri, TMAPI_QUEUE_PREFETCH=2)
    built: list[PageContext] = []
    two, three = asyncio.Event(), asyncio.Event()

    def factory(context: PageContext) -> Request:
        built.append(context)
        {2: two, 3: three}.get(len(built), asyncio.Event()).set()
        return part.spider.page_request(context)

    scheduler = DistributedScheduler(part.crawler, part.cluster, factory)
    # The engine's side of ``engine.crawl``: a scheduled request goes to the scheduler.
    part.crawler.engine = SimpleNamespace(  # type: ignore[assignment]
        crawl=scheduler.enqueue_request, scheduler=scheduler, spider_is_idle=lambda: False)
    taken: list[Request] = []

    async def scenario() -> list[PageContext]:
        await maybe_deferred_to_future(scheduler.open(part.spider))
        part.crawl_id = scheduler.crawl_id or ""
        part.queue = scheduler.queue
        contexts = await part.seed(1, 2, 3)
        scheduler.spider_opened()
        await asyncio.wait_for(two.wait(), 30)
        assert scheduler.has_pending_requests()
        assert redis_client.zcard(part.keys.queue) == 1  # no more than the prefetch
        taken.append(scheduler.next_request())
        assert not three.is_set()
        taken.append(scheduler.next_request())  # the buffer at half: the fetcher refills it
        await asyncio.wait_for(three.wait(), 30)
        assert scheduler.has_pending_requests()
        await maybe_deferred_to_future(scheduler.close("shutdown"))
        await part.cluster.aclose()
        return contexts

    contexts = asyncio.run(scenario())
    assert sorted(built, key=lambda c: c.page) == contexts  # each rebuilt once
    assert all(LEASE_META in request.meta for request in taken)
    # In the order they were leased: the queue's.
    assert [r.url for r in taken] == [part.spider.page_request(c).url for c in built[:2]]
    assert part.stat("scheduler/dequeued/redis") == 2
    assert leased(redis_client, part) == set()
    assert redis_client.zcard(part.keys.queue) == 3
    assert part.stat("tmapi/distributed/given_back") == 3
    exited = json.loads(redis_client.hget(part.keys.workers, part.cluster.worker_id))
    assert (exited["state"], exited["finish_reason"]) == ("exited", "shutdown")
