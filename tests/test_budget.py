"""The budget (``TMAPI_MAX_REQUESTS``) in the transport, in-process: both counters.

The calls the server sees never exceed the budget, whatever the concurrency limit and however
many answers are 503s that get retried; the call the budget refuses is not sent and the crawl
closes with ``tmapi_budget_exhausted``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from scrapy.crawler import Crawler
from scrapy.http import Response

from tests.crawling import TOKEN
from tests.inprocess import (
    crawler_for,
    engine_stopped,
    project_settings,
    spider_closed,
    spider_opened,
)
from tests.servers import RedisProcess
from tests.test_transport import FAST_RETRIES, api_request, outcome, run
from tmapi_crawler import closing
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.transport.middleware import TmapiTransportMiddleware

BUDGET = 6
FAULTS = {"none": {}, "503s": {"fault_rates": {503: 0.4}}}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"101": 95}) as process:
        yield process


def pages(base_url: str, count: int) -> list[Any]:
    return [api_request(base_url, cat_id=101, page=p % 5 + 1) for p in range(count)]


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("limit", [1, 4, 8])
def test_the_server_never_sees_more_calls_than_the_budget(
    sandbox: SandboxProcess, limit: int, fault: str
) -> None:
    sandbox.configure(**FAULTS[fault])
    requests = pages(sandbox.url, 12)
    reasons: list[str] = []

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        outcomes = await asyncio.gather(*(outcome(transport, r) for r in requests))
        reasons.append(closing.stop_reason(crawler))
        return outcomes

    outcomes, stats = run(sandbox.url, scenario, TMAPI_CONCURRENCY=limit,
                          TMAPI_MAX_REQUESTS=BUDGET, **{**FAST_RETRIES, "TMAPI_RETRY_TIMES": 8})
    seen = sandbox.stats()["requests"]
    assert seen == BUDGET == stats[stats_keys.REQUESTS]
    assert reasons == [closing.BUDGET_EXHAUSTED]
    failed = [o for o in outcomes if not isinstance(o, Response)]
    assert failed
    assert set(failed) == {"not_sent"}
    assert stats[stats_keys.REQUESTS_NOT_SENT] == len(failed)
    if fault == "none":
        assert len(outcomes) - len(failed) == BUDGET


def test_no_budget_sends_everything(sandbox: SandboxProcess) -> None:
    requests = pages(sandbox.url, 8)

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        return await asyncio.gather(*(outcome(transport, r) for r in requests))

    outcomes, stats = run(sandbox.url, scenario, TMAPI_MAX_REQUESTS=0)
    assert all(isinstance(o, Response) for o in outcomes)
    assert stats[stats_keys.REQUESTS] == 8 == sandbox.stats()["requests"]


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.uri


async def _workers(base_url: str, redis_url: str, prefix: str, count: int,
                   **settings: Any) -> list[Crawler]:
    crawlers = []
    for _ in range(count):
        crawler = crawler_for(project_settings(
            "settings_profiles.distributed", TMAPI_BASE_URL=base_url, REDIS_URL=redis_url,
            TMAPI_REDIS_PREFIX=prefix, **settings))
        await spider_opened(crawler)
        crawlers.append(crawler)
    return crawlers


async def _close(crawlers: list[Crawler]) -> None:
    for crawler in crawlers:
        await spider_closed(crawler)
        await engine_stopped(crawler)


def _transport(crawler: Crawler) -> TmapiTransportMiddleware:
    transport = crawler.get_downloader_middleware(TmapiTransportMiddleware)
    assert transport is not None
    return transport


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("limit", [1, 4, 8])
def test_the_cluster_shares_one_budget(
    sandbox: SandboxProcess, redis_url: str, limit: int, fault: str
) -> None:
    """Three workers, one budget: the server sees at most the budget, all told."""
    sandbox.configure(**FAULTS[fault])
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def main() -> list[dict[str, Any]]:
        workers = await _workers(sandbox.url, redis_url, prefix, 3, TMAPI_CONCURRENCY=limit,
                                 TMAPI_MAX_REQUESTS=BUDGET, **FAST_RETRIES)
        try:
            await asyncio.wait_for(asyncio.gather(*(
                outcome(_transport(w), r) for w in workers for r in pages(sandbox.url, 6)
            )), 60)
        finally:
            await _close(workers)
        return [w.stats.get_stats() for w in workers]

    stats = asyncio.run(main())
    assert sandbox.stats()["requests"] == BUDGET
    assert sum(s.get(stats_keys.REQUESTS, 0) for s in stats) == BUDGET


def test_workers_started_after_a_budget_stop_go_on(
    sandbox: SandboxProcess, redis_url: str
) -> None:
    """A budget stop stops the workers then running; workers started again get a new count."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[list[Any], list[Any], str]:
        first = await _workers(sandbox.url, redis_url, prefix, 1, TMAPI_MAX_REQUESTS=2)
        try:
            before = [await outcome(_transport(first[0]), r) for r in pages(sandbox.url, 3)]
            reason = closing.stop_reason(first[0])
        finally:
            await _close(first)
        again = await _workers(sandbox.url, redis_url, prefix, 1, TMAPI_MAX_REQUESTS=3)
        try:
            after = [await outcome(_transport(again[0]), r) for r in pages(sandbox.url, 4)]
        finally:
            await _close(again)
        return before, after, reason

    before, after, reason = asyncio.run(main())
    assert reason == closing.BUDGET_EXHAUSTED
    assert [isinstance(o, Response) for o in before] == [True, True, False]
    assert [isinstance(o, Response) for o in after] == [True, True, True, False]
    assert sandbox.stats()["requests"] == 5
