"""The keeper of a worker (``distributed/keeper.py``), in-process against a real
redis-server: heartbeats and a dead worker's leases, the crawl's end (at once when its work is
done, after ``MAX_IDLE_TIME_BEFORE_CLOSE`` when it never had any), and a crawl Redis lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis

from tests.distributed.parts import Part, lease_request, leased
from tests.servers import RedisProcess
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED, REDIS_STATE_LOST, stop_reason
from tmapi_crawler.commands.crawl import summary_line
from tmapi_crawler.distributed.keeper import Keeper
from tmapi_crawler.distributed.leases import Leases
from tmapi_crawler.distributed.queue import SharedQueue

IDLE = stats_keys.DISTRIBUTED_IDLE


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
