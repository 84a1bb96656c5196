"""The distributed scheduler in-process, on its own asyncio loop and a real redis-server: what
it queues and what it refuses to take from the queue; its buffer, filled through the request
factory it was handed. Its leases and keeper have their own tests (``test_cluster_leases.py``,
``test_cluster_keeper.py``); real workers crawling together, ``test_cluster_crawls.py``."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import redis
from scrapy import Request, signals
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.test import get_crawler

from tests.cluster import cluster_settings
from tests.distributed.parts import Part, leased
from tests.inprocess import until
from tests.servers import RedisProcess
from tmapi_crawler.distributed.scheduler import DistributedScheduler
from tmapi_crawler.frontier.context import LEASE_META, PageContext
from tmapi_crawler.frontier.decisions import priority
from tmapi_crawler.plan import Query
from tmapi_crawler.spiders.category_items import CategoryItemsSpider

KEY = "tmapi:category_items"


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
