"""Both limiters, in-process, through the ``transport.limiter.Limiter`` interface alone: this
process's ``AdaptiveLimiter``, and the cluster's ``RedisLimiter`` on the real redis-server.

Each is built from the settings (``TMAPI_LIMITER``) of a crawler, as the transport builds it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from scrapy.utils.misc import build_from_crawler, load_object

from tests.inprocess import (
    crawler_for,
    engine_stopped,
    project_settings,
    spider_closed,
    spider_opened,
)
from tests.servers import RedisProcess
from tmapi_crawler.transport.limiter import Limiter, LimiterClosed

KINDS = ["adaptive", "redis"]


def settings_for(kind: str, redis_server: RedisProcess, prefix: str, **extra: Any
                 ) -> tuple[str, dict[str, Any]]:
    if kind == "adaptive":
        return "tmapi_crawler.settings", extra
    # A new limiter epoch grants nothing for two heartbeat intervals (live workers put their
    # permits back first): short heartbeats keep that grace short here.
    return "settings_profiles.distributed", {"REDIS_URL": redis_server.uri,
                                             "TMAPI_REDIS_PREFIX": prefix,
                                             "TMAPI_HEARTBEAT_INTERVAL": 0.05,
                                             "TMAPI_HEARTBEAT_TTL": 0.5, **extra}


Scenario = Callable[..., Awaitable[Any]]


def run(kind: str, redis_server: RedisProcess, scenario: Scenario, workers: int = 1,
        **settings: Any) -> Any:
    """Build ``workers`` limiters sharing one account (one Redis prefix) and run ``scenario``."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def main() -> Any:
        module, values = settings_for(kind, redis_server, prefix, **settings)
        crawlers = [crawler_for(project_settings(module, **values)) for _ in range(workers)]
        limiters: list[Limiter] = []
        for crawler in crawlers:
            limiters.append(build_from_crawler(
                load_object(crawler.settings["TMAPI_LIMITER"]), crawler))
            await spider_opened(crawler)
        try:
            return await scenario(*limiters)
        finally:
            for limiter in limiters:
                await limiter.close()
            for crawler in crawlers:  # the transport's own limiter closes too
                await spider_closed(crawler)
                await engine_stopped(crawler)

    return asyncio.run(main())


async def settle() -> None:
    """Give waiting acquires the time to run (a Redis limiter needs round trips): what was
    not granted by then is refused, as far as a test can tell."""
    for _ in range(50):
        await asyncio.sleep(0.01)


async def granted(waiting: list[asyncio.Future[None]], count: int) -> int:
    """Wait until ``count`` of ``waiting`` are granted, then settle: how many are granted."""
    async def enough() -> None:
        while sum(w.done() for w in waiting) < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(enough(), 10)
    await settle()
    return sum(w.done() for w in waiting)


@pytest.mark.parametrize("kind", KINDS)
def test_never_more_permits_than_the_limit(kind: str, redis_server: RedisProcess) -> None:
    async def scenario(limiter: Limiter) -> tuple[int, int, int]:
        waiting = [asyncio.ensure_future(limiter.acquire()) for _ in range(5)]
        granted_first = await granted(waiting, 3)
        await limiter.release()
        granted_then = await granted(waiting, 4)
        for task in waiting:
            if task.done():
                await limiter.release()
            else:
                task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return granted_first, granted_then, limiter.peak

    assert run(kind, redis_server, scenario, TMAPI_CONCURRENCY=3) == (3, 4, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_503s_lower_the_limit_and_successes_earn_it_back(
    kind: str, redis_server: RedisProcess
) -> None:
    async def scenario(limiter: Limiter) -> list[int]:
        seen = [limiter.limit]
        for _ in range(3):
            await limiter.throttled()
            seen.append(limiter.limit)
        raised = [await limiter.succeeded() for _ in range(4)]
        seen.append(limiter.limit)
        assert raised == [False, True, False, True]
        return seen

    # Down by one per 503 (not below 1), up by one every 2 successes.
    assert run(kind, redis_server, scenario, TMAPI_CONCURRENCY=3,
               TMAPI_THROTTLE_RECOVERY=2) == [3, 2, 1, 1, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_close_refuses_waiting_and_later_acquires(kind: str, redis_server: RedisProcess) -> None:
    async def scenario(limiter: Limiter) -> list[Any]:
        await limiter.acquire()
        waiting = asyncio.ensure_future(limiter.acquire())
        await settle()
        assert not waiting.done()
        await limiter.close()
        outcomes = [await asyncio.gather(waiting, return_exceptions=True)]
        try:
            await limiter.acquire()
        except LimiterClosed as closed:
            outcomes.append([closed])
        return [type(o[0]) for o in outcomes]

    assert run(kind, redis_server, scenario, TMAPI_CONCURRENCY=1) == [LimiterClosed] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_waiter_keeps_no_permit(kind: str, redis_server: RedisProcess) -> None:
    async def scenario(limiter: Limiter) -> bool:
        await limiter.acquire()
        cancelled = asyncio.ensure_future(limiter.acquire())
        await settle()
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        await limiter.release()
        # The only permit is free again: the next waiter gets it.
        await asyncio.wait_for(limiter.acquire(), 10)
        return True

    assert run(kind, redis_server, scenario, TMAPI_CONCURRENCY=1)


def test_workers_share_one_limit_and_one_stop(redis_server: RedisProcess) -> None:
    """The cluster's limit is the account's: two workers hold at most its permits together,
    and a quota stop by one refuses the other's waiters."""

    async def scenario(first: Limiter, second: Limiter) -> tuple[int, type[BaseException]]:
        await first.acquire()
        await first.acquire()
        waiting = asyncio.ensure_future(second.acquire())
        await settle()
        held = 2 + waiting.done()
        await first.close("tmapi_quota_exhausted")
        (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
        return held, type(outcome)

    held, outcome = run("redis", redis_server, scenario, workers=2, TMAPI_CONCURRENCY=2)
    assert held == 2
    assert outcome is LimiterClosed
