"""The leases of a worker and their ordered writer (``distributed/leases.py``), in-process
against a real redis-server: the order of writes, acknowledgements once every product is
stored, failures for good, and what a clean stop gives back."""

from __future__ import annotations

import asyncio
import json

import redis

from tests.distributed.parts import Part, lease_request, leased
from tests.servers import RedisProcess
from tmapi_crawler.distributed.entries import decode as decode_entry
from tmapi_crawler.distributed.queue import page_push
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.items import ProductItem, ProductPage
from tmapi_crawler.plan import Query


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
