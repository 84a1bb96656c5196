"""The spider in-process (``get_crawler``): it only wires answers to the frontier and back.

Answers come from the sandbox's own page builder, so no server is needed; the frontier's
policy has its own tests (``test_frontier``), the whole crawl its own (``test_splitting``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from scrapy import Request
from scrapy.exceptions import CloseSpider
from scrapy.http import TextResponse
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.frontier.state import MemoryState, StateLost
from tmapi_crawler.items import ProductPage
from tmapi_crawler.sandbox.config import SandboxConfig, parse_request
from tmapi_crawler.sandbox.server import Sandbox
from tmapi_crawler.spiders.category_items import CategoryItemsSpider
from tmapi_crawler.transport.call import ApiError

SETTINGS = {
    "TMAPI_BASE_URL": "http://api.invalid",
    "TMAPI_RESULT_CAP": 2000,
    "TMAPI_QUERY_WINDOW": 3,
    "TMAPI_FRONTIER_STATE": "tmapi_crawler.frontier.state.MemoryState",
    # What a page cost and what the frontier learned are counted there.
    "EXTENSIONS": {"tmapi_crawler.accounting.PageAccounting": 0},
}
SANDBOX = Sandbox(SandboxConfig(sizes={7: 200}))


class Engine:
    """What the spider uses of Scrapy's engine: ``crawl``, which queues a request."""

    def __init__(self) -> None:
        self.crawled: list[Request] = []

    def crawl(self, request: Request) -> None:
        self.crawled.append(request)


def collect(outputs: AsyncIterator[Any] | Coroutine[Any, Any, None],
            spider: CategoryItemsSpider | None = None) -> list[Any]:
    """What a start, callback or errback queued through the engine, then what it yielded."""
    async def gather() -> list[Any]:
        if isinstance(outputs, Coroutine):
            await outputs
            return []
        return [output async for output in outputs]
    yielded = asyncio.run(gather())
    if spider is None:
        return yielded
    engine = spider.crawler.engine
    crawled, engine.crawled = engine.crawled, []
    return [*crawled, *yielded]


def answer(request: Request) -> TextResponse:
    params = dict(parse_qsl(urlsplit(request.url).query))
    body, _ = SANDBOX.listing_body(parse_request(params, None))
    return TextResponse(request.url, body=body.encode(), encoding="utf-8", request=request)


def spider_for(settings: dict[str, Any] | None = None, **arguments: str
               ) -> CategoryItemsSpider:
    crawler = get_crawler(CategoryItemsSpider, {**SETTINGS, **(settings or {})})
    crawler.engine = Engine()
    crawler.spider = CategoryItemsSpider.from_crawler(crawler, **arguments)  # as Scrapy sets it
    return crawler.spider


def pages(outputs: list[Any]) -> list[int]:
    return [PageContext.from_dict(o.meta[META_KEY]).page for o in outputs
            if isinstance(o, Request)]


def test_an_answer_goes_in_and_its_items_and_next_pages_come_out() -> None:
    spider = spider_for(cat_id="7")
    (first,) = collect(spider.start())
    assert first.url == ("http://api.invalid/1688/category/items/v2?cat_id=7&language=en&page=1"
                         "&page_size=20&sort=default")
    assert first.priority == 0
    out = collect(spider.parse(answer(first)), spider)
    assert pages(out) == [2, 3, 4]
    assert all(r.priority > first.priority for r in out if isinstance(r, Request))
    (products,) = [o for o in out if isinstance(o, ProductPage)]
    assert [p.context.position for p in products.products] == list(range(20))
    stats = spider.crawler.stats
    assert stats.get_value("tmapi/pages") == 1
    assert stats.get_value("tmapi/items") == 20
    assert stats.get_value("tmapi/queries") == 1
    assert stats.get_value("tmapi/pages/known") == 10


def test_a_page_given_up_on_is_counted_and_its_window_moves_on() -> None:
    spider = spider_for(cat_id="7")
    (first,) = collect(spider.start())
    second = next(o for o in collect(spider.parse(answer(first)), spider)
                  if isinstance(o, Request))
    failure = Failure(ApiError("gave up after 417", "417"))
    failure.request = second  # type: ignore[attr-defined]  # as Scrapy sets it
    assert pages(collect(spider.page_failed(failure), spider)) == [5]
    stats = spider.crawler.stats
    assert stats.get_value("tmapi/pages/failed_by_reason/417") == 1
    assert stats.get_value("tmapi/coverage/incomplete/7") == 1


def test_what_a_page_asks_for_is_queued_before_the_page_is_said_done() -> None:
    """A cluster worker acknowledges a page on these signals: what the page asked for must be
    queued by then, or a worker dying in between loses it (Scrapy queues what a callback
    yields later, in parallel)."""
    spider = spider_for(cat_id="7")
    engine = spider.crawler.engine
    queued: list[tuple[str, int]] = []
    for name, signal in (("parsed", tmapi_signals.page_parsed),
                         ("failed", tmapi_signals.page_failed)):
        spider.crawler.signals.connect(
            lambda name=name, **_: queued.append((name, len(engine.crawled))), signal=signal,
            weak=False)
    (first,) = collect(spider.start())
    second = collect(spider.parse(answer(first)), spider)[0]
    failure = Failure(ApiError("gave up after 417", "417"))
    failure.request = second  # type: ignore[attr-defined]  # as Scrapy sets it
    collect(spider.page_failed(failure), spider)
    assert queued == [("parsed", 3), ("failed", 1)]


def test_what_the_frontier_learned_is_counted_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tmapi_crawler")
    spider = spider_for(cat_id="7", page_size="50")
    (first,) = collect(spider.start())
    clamped = Sandbox(SandboxConfig(sizes={7: 200}, page_size_limit=20))
    params = dict(parse_qsl(urlsplit(first.url).query))
    body, _ = clamped.listing_body(parse_request(params, None))
    response = TextResponse(first.url, body=body.encode(), encoding="utf-8", request=first)
    out = collect(spider.parse(response), spider)
    assert pages(out) == [2, 3, 4]
    assert all("page_size=20" in r.url for r in out if isinstance(r, Request))
    assert spider.crawler.stats.get_value("tmapi/paging/resized_queries") == 1
    assert "the API serves 20 results per page, not 50" in caplog.text


def test_what_splitting_cost_is_the_page_read_again_not_the_pages_of_split_queries() -> None:
    spider = spider_for({"TMAPI_RESULT_CAP": 100}, cat_id="7")
    (first,) = collect(spider.start())
    (walk,) = collect(spider.parse(answer(first)), spider)[:1]
    assert PageContext.from_dict(walk.meta[META_KEY]).depth == 1  # split: walked by price
    walked = [r for r in collect(spider.parse(answer(walk)), spider) if isinstance(r, Request)]
    collect(spider.parse(answer(walked[-1])), spider)
    stats = spider.crawler.stats
    assert stats.get_value("tmapi/split/extra_requests") == 1
    assert (stats.get_value("tmapi/cost/splits"), stats.get_value("tmapi/cost/pages")) == (1, 2)
    assert stats.get_value("tmapi/cost_by_category/7") == 3


def test_a_probe_asks_for_page_1_of_each_planned_query_and_nothing_more() -> None:
    crawler = get_crawler(CategoryItemsSpider, SETTINGS)
    crawler.engine = Engine()
    spider = crawler.spider = CategoryItemsSpider.from_crawler(crawler, probe=True, cat_id="7",
                                                               language="en,ru")
    said: list[tuple[int, int]] = []
    crawler.signals.connect(lambda calls, held, **_: said.append((calls, held)),
                            signal=tmapi_signals.probe_planned, weak=False)
    firsts = collect(spider.start())
    assert pages(firsts) == [1, 1]
    assert said == [(2, 0)]  # said before anything is sent
    out = collect(spider.parse(answer(firsts[0])), spider)
    assert [type(o) for o in out] == [ProductPage]  # no follow-up
    key = PageContext.from_dict(firsts[0].meta[META_KEY]).key
    assert spider.frontier.probed[key].total_count == 200
    stats = crawler.stats
    assert stats.get_value("tmapi/cost/probes") == 1
    assert stats.get_value("tmapi/cost/pages") is None
    assert stats.get_value("tmapi/queries") is None  # the crawl that resumes it counts them
    failure = Failure(ApiError("gave up after 417", "417"))
    failure.request = firsts[1]  # type: ignore[attr-defined]  # as Scrapy sets it
    assert collect(spider.page_failed(failure), spider) == []
    with pytest.raises(CloseSpider) as closed:
        spider._probe_done()
    assert closed.value.reason == "tmapi_probed"


class LostState(MemoryState):
    """A shared state that is gone: no page can be decided on it."""

    def for_page(self, page: str) -> MemoryState:
        raise StateLost("the cluster crawl's state is gone")


def test_a_page_answered_after_the_shared_state_was_lost_keeps_its_products() -> None:
    """The page is paid for: its products go on to be stored (with its ledger page, so a
    resume does not pay for it again), but it is not said parsed, and the error goes on."""
    spider = spider_for(cat_id="7")
    (first,) = collect(spider.start())
    spider.frontier.state = LostState()
    parsed: list[Any] = []
    spider.crawler.signals.connect(lambda **kwargs: parsed.append(kwargs),
                                   signal=tmapi_signals.page_parsed, weak=False)
    yielded: list[Any] = []

    async def parse() -> None:
        async for output in spider.parse(answer(first)):
            yielded.append(output)

    with pytest.raises(StateLost):
        asyncio.run(parse())
    (products,) = yielded
    assert isinstance(products, ProductPage)
    assert len(products.products) == 20
    assert parsed == []
    assert spider.crawler.engine.crawled == []
