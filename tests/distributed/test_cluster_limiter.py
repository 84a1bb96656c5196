"""The cluster's concurrency limiter, in-process: each ``RedisLimiter`` here is one worker of a
cluster (its own worker id), all of them on a real redis-server, which some tests restart."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from scrapy.utils.test import get_crawler

from tests.cluster import cluster_settings
from tests.servers import RedisProcess
from tmapi_crawler.distributed.limiter import RedisLimiter
from tmapi_crawler.spiders.category_items import CategoryItemsSpider
from tmapi_crawler.transport.limiter import AdaptiveLimiter, Limiter, LimiterClosed

LIMIT = 4


def limiter(uri: str, **settings: Any) -> RedisLimiter:
    """One worker's limiter, as ``from_crawler`` builds it."""
    # No reactor: the test drives the limiter on its own asyncio loop.
    crawler = get_crawler(CategoryItemsSpider, dict(cluster_settings(
        uri, TMAPI_CONCURRENCY=LIMIT, TMAPI_LIMITER_POLL_INTERVAL=0.02,
        TWISTED_REACTOR_ENABLED=False, **settings)))
    return RedisLimiter.from_crawler(crawler)


async def started(*limiters: RedisLimiter) -> None:
    for each in limiters:
        await each.start()


async def shut(*limiters: RedisLimiter) -> None:
    for each in limiters:
        await each.close()
        await each.cluster.aclose()


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


class InUse:
    """Requests in flight across every limiter, as the API would count them."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def request(self, limiter: RedisLimiter) -> None:
        await limiter.acquire()
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.002)
        finally:
            self.now -= 1
            await limiter.release()


def test_both_limiters_implement_the_protocol(redis_server: RedisProcess) -> None:
    members = {name for name in vars(Limiter) if not name.startswith("_")}
    members |= set(Limiter.__annotations__)
    assert members >= {"acquire", "release", "throttled", "succeeded", "close", "closed",
                       "limit", "maximum", "peak"}
    for each in (AdaptiveLimiter(LIMIT, 32), limiter(redis_server.uri)):
        for name in members:
            assert hasattr(each, name), (each, name)
            if inspect.iscoroutinefunction(getattr(Limiter, name, None)):
                assert inspect.iscoroutinefunction(getattr(each, name)), (each, name)
        assert (each.limit, each.maximum, each.peak, each.closed) == (LIMIT, LIMIT, 0, False)


def test_the_cluster_never_exceeds_the_limit_and_permits_change_hands_locally(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    first, second = limiter(redis_server.uri), limiter(redis_server.uri)
    in_use = InUse()
    rounds = 40

    async def scenario() -> tuple[int, int]:
        await started(first, second)
        try:
            alone = [in_use.request(first) for _ in range(2 * LIMIT) for _ in range(rounds)]
            before = evalsha_calls(redis_client)
            await asyncio.gather(*alone)
            calls = evalsha_calls(redis_client) - before
            together = [in_use.request(each) for each in (first, second)
                        for _ in range(2 * LIMIT) for _ in range(rounds)]
            await asyncio.gather(*together)
            return calls, len(alone)
        finally:
            await shut(first, second)

    calls, requests = asyncio.run(scenario())
    assert in_use.peak == LIMIT  # reached, never exceeded
    # One worker alone passes its permits from request to request: a few Redis calls to get
    # them, not one per request.
    assert calls < requests / 4
    assert redis_client.zcard("tmapi:limiter:permits") == 0  # all given back at shutdown


def test_a_request_that_comes_to_wait_while_the_pump_withdraws_gets_a_permit(
    redis_server: RedisProcess,
) -> None:
    """The pump withdrew its claim on other workers' shares and then ended, leaving a request
    that came to wait during the withdrawal with no pump to ask for it: it waited forever (a
    full test run hung so)."""
    each = limiter(redis_server.uri)

    async def scenario() -> None:
        await started(each)
        withdrawing, go_on = asyncio.Event(), asyncio.Event()
        ask = each._ask

        async def slow_withdrawal(wanted: int) -> list[str]:
            if not wanted:
                withdrawing.set()
                await go_on.wait()
            return await ask(wanted)

        each._ask = slow_withdrawal  # type: ignore[method-assign]
        try:
            each._short = True  # it was refused permits: another worker holds them
            each._tasks["pump"] = asyncio.ensure_future(each._pump())
            await withdrawing.wait()
            acquiring = asyncio.ensure_future(each.acquire())
            await asyncio.sleep(0)  # it waits, and finds the pump running
            go_on.set()
            await asyncio.wait_for(acquiring, 10)
            await each.release()
        finally:
            await shut(each)

    asyncio.run(scenario())


def test_a_worker_gets_its_share_while_another_holds_every_permit(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    busy, late = limiter(redis_server.uri), limiter(redis_server.uri)
    in_use = InUse()

    async def forever(each: RedisLimiter, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await in_use.request(each)

    async def scenario() -> int:
        await started(busy, late)
        stop = asyncio.Event()
        try:
            hogs = [asyncio.ensure_future(forever(busy, stop)) for _ in range(2 * LIMIT)]
            while busy.in_flight < LIMIT:
                await asyncio.sleep(0.005)
            # Without a share, the busy worker would keep every permit as long as it runs.
            await asyncio.wait_for(asyncio.gather(*(in_use.request(late) for _ in range(20))),
                                   timeout=60)
            held_by_busy = busy.in_flight
            stop.set()
            await asyncio.gather(*hogs)
            return held_by_busy
        finally:
            await shut(busy, late)

    assert asyncio.run(scenario()) <= LIMIT
    assert in_use.peak == LIMIT


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    servers: list[RedisProcess] = []

    def start(*, persistent: bool) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis{len(servers)}", persistent=persistent).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def until(condition: Callable[[], Any], timeout: float = 60) -> None:
    """Wait for an event; the timeout only keeps a broken build from hanging."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_permits_whose_release_failed_come_back_as_soon_as_redis_answers(
    own_redis: Callable[..., RedisProcess],
) -> None:
    server = own_redis(persistent=True)
    # Leased for an hour: only giving them back again can free them within the test.
    worker = limiter(server.uri, TMAPI_LEASE_SECONDS=3600)
    client = redis.Redis.from_url(server.uri)

    async def scenario() -> None:
        await started(worker)
        try:
            for _ in range(LIMIT):
                await worker.acquire()
            assert client.zcard("tmapi:limiter:permits") == LIMIT
            server.stop()
            for _ in range(LIMIT):
                await worker.release()  # Redis is down: kept to be given back later
            server.start()
            await until(lambda: client.zcard("tmapi:limiter:permits") == 0)
            for _ in range(LIMIT):  # and the whole limit can be used again
                await asyncio.wait_for(worker.acquire(), 60)
        finally:
            await shut(worker)

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_after_redis_lost_its_state_permits_in_use_are_put_back_before_any_is_granted(
    own_redis: Callable[..., RedisProcess],
) -> None:
    server = own_redis(persistent=False)
    holder, newcomer = limiter(server.uri), limiter(server.uri)
    client = redis.Redis.from_url(server.uri)

    async def scenario() -> tuple[int, int]:
        await started(holder, newcomer)
        try:
            for _ in range(LIMIT - 1):
                await holder.acquire()  # three requests in flight...
            server.restart()  # ...when Redis comes back empty
            waiting = [asyncio.ensure_future(newcomer.acquire()) for _ in range(LIMIT)]
            await until(lambda: any(w.done() for w in waiting))
            await asyncio.sleep(0)
            granted = sum(1 for w in waiting if w.done())
            in_redis = client.zcard("tmapi:limiter:permits")
            for _ in range(LIMIT - 1):
                await holder.release()
            await asyncio.wait_for(asyncio.gather(*waiting), 60)
            return granted, in_redis
        finally:
            await shut(holder, newcomer)

    try:
        granted, in_redis = asyncio.run(scenario())
    finally:
        client.close()
    assert granted == 1  # the limit minus what the other worker still had in flight
    assert in_redis == LIMIT


def test_a_stop_reaches_every_worker_started_before_it(redis_server: RedisProcess,
                                                        redis_client: redis.Redis) -> None:
    stopping, other = limiter(redis_server.uri), limiter(redis_server.uri)

    async def scenario() -> None:
        await started(stopping, other)
        try:
            await stopping.acquire()
            await other.acquire()
            await stopping.close("tmapi_quota_exhausted")
            await until(lambda: other.closed)
            with pytest.raises(LimiterClosed):
                await other.acquire()
        finally:
            await shut(stopping, other)

    asyncio.run(scenario())
    assert redis_client.hget("tmapi:limiter:stop", "reason") == b"tmapi_quota_exhausted"


def test_a_released_permit_never_comes_back_to_life(redis_server: RedisProcess,
                                                    redis_client: redis.Redis) -> None:
    """A renewal sent before a release can reach Redis after it (another connection): the
    permit must stay released, or the cluster loses a slot until its lease expires (seen in
    B5 as runs stuck at 2 requests in flight)."""
    worker = limiter(redis_server.uri)

    async def scenario() -> None:
        await started(worker)
        try:
            for _ in range(2):
                await worker.acquire()
            renewal = list(worker._held)  # what an acquisition in flight carries
            await worker.release()
            await until(lambda: redis_client.zcard("tmapi:limiter:permits") == 1)
            await worker.cluster.scripts["limiter_acquire"](
                keys=[worker.keys.epoch, worker.keys.limit, worker.keys.permits,
                      worker.keys.stop, worker.keys.waiting],
                args=[LIMIT, 0, worker.lease_ms, worker.cluster.worker_id, "late", 0,
                      worker.grace_ms, 1000, *renewal])
            assert redis_client.zcard("tmapi:limiter:permits") == 1
        finally:
            await shut(worker)

    asyncio.run(scenario())
