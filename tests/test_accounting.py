"""The page accounting (``accounting.PageAccounting``) on its own, in-process: the page signals
are sent to it directly, as the spider sends them, and what it counted, logged and wrote to the
resume ledger (a real mongod) is read back."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pymongo
import pytest
from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider

from tests.inprocess import crawler_for, project_settings, spider_closed, until
from tests.servers import MongodProcess
from tmapi_crawler import crawl
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.accounting import Completeness, PageAccounting
from tmapi_crawler.frontier.completeness import STALE_STOPPED, Loss
from tmapi_crawler.frontier.context import CALLS_META, REPLAYED_META, PageContext
from tmapi_crawler.frontier.decisions import Decision, Note
from tmapi_crawler.frontier.replay import Replay
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.plan import Query
from tmapi_crawler.storage.collections import LEDGER
from tmapi_crawler.storage.store import ProductStore
from tmapi_crawler.transport.middleware import NOT_SENT

CAT = 7


def accounting_of(crawler: Crawler) -> PageAccounting:
    accounting = crawler.get_extension(PageAccounting)
    assert accounting is not None, "enabled in the project's EXTENSIONS"
    return accounting


def request_for(crawler: Crawler, page: int, calls: int) -> Request:
    """A page's request as the transport hands it back: with the calls it paid for it."""
    request = crawler.spider.page_request(PageContext(Query(CAT), page=page, last=9))
    request.meta[CALLS_META] = calls
    return request


def test_an_empty_page_and_a_page_given_up_on_get_their_ledger_entry_and_cost(
    mongod: MongodProcess, mongo_client: pymongo.MongoClient, mongo_db_name: str,
) -> None:
    async def scenario() -> tuple[str, ProductPage, dict[str, Any]]:
        crawler = crawler_for(project_settings(MONGO_URI=mongod.uri,
                                               MONGO_DATABASE=mongo_db_name), cat_id=str(CAT))
        store = ProductStore.of(crawler)
        await store.open()
        send = crawler.signals.send_catch_log_async
        try:
            # Empty, after a retry: two calls.
            await send(tmapi_signals.page_answered, request=request_for(crawler, 3, 2),
                       summary=PageSummary(0, total_count=40), decision=Decision(),
                       page=ProductPage([]))
            full = ProductPage([ProductItem.from_raw({"item_id": "11", "title": "x"}, QueryContext(
                cat_id=CAT, language="en", sort="default", filters={}, page=2, position=0))])
            await send(tmapi_signals.page_answered, request=request_for(crawler, 2, 1),
                       summary=PageSummary(1, ids=(11,)), decision=Decision(), page=full)
            await send(tmapi_signals.page_given_up, request=request_for(crawler, 4, 3),
                       reason="417")
            # Kept from being sent by the stop: it cost nothing, the ledger has nothing of it.
            await send(tmapi_signals.page_given_up, request=request_for(crawler, 5, 0),
                       reason=NOT_SENT)
            return crawl.crawl_id(crawler), full, crawler.stats.get_stats()
        finally:
            await store.close()

    crawl_id, full, stats = asyncio.run(scenario())
    ledger = {d["key"]: d for d in mongo_client[mongo_db_name][LEDGER].find()}
    key = Query(CAT).key()
    assert sorted(ledger) == [f"{key}#3", f"{key}#4"]
    empty, lost = ledger[f"{key}#3"], ledger[f"{key}#4"]
    assert (empty["crawl_id"], empty["state"], empty["calls"], empty["planned"]) == (
        crawl_id, "stored", 2, key)
    assert PageSummary.from_dict(empty["summary"]) == PageSummary(0, total_count=40)
    assert (lost["crawl_id"], lost["state"], lost["calls"], lost["cat_id"]) == (
        crawl_id, "lost", 3, CAT)
    # A page with products carries its ledger document to the writer.
    assert full.ledger is not None
    assert (full.ledger["key"], full.ledger["calls"]) == (f"{key}#2", 1)
    assert (stats[stats_keys.PAGES], stats[stats_keys.ITEMS], stats[stats_keys.PAGES_EMPTY]) == (
        2, 1, 1)
    assert (stats[stats_keys.COST_PAGES], stats[stats_keys.COST_RETRIES]) == (2, 1)
    assert stats[stats_keys.COST_FAILURES] == 3
    assert stats[stats_keys.cost_by_category(CAT)] == 2 + 1 + 3
    assert stats[stats_keys.failed_by_reason("417")] == 1
    assert stats[stats_keys.failed_by_reason(NOT_SENT)] == 1


def test_a_decision_is_counted_logged_and_marks_coverage(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tmapi_crawler")

    async def scenario() -> tuple[dict[str, Any], list[Loss]]:
        crawler = crawler_for(project_settings(), cat_id=str(CAT))
        crawler.signals.send_catch_log(tmapi_signals.frontier_decided, decision=Decision(
            counters=Counter({stats_keys.QUERIES: 2, stats_keys.QUERIES_DONE: 0}),
            notes=[Note(logging.WARNING, "query cut short at the cap", CAT),
                   Note(logging.INFO, "nothing lost")],
            cap=100, losses=[Loss(8, STALE_STOPPED, Query(8).key())]))
        return crawler.stats.get_stats(), Completeness.of(crawler).losses()

    stats, losses = asyncio.run(scenario())
    assert stats[stats_keys.QUERIES] == 2
    assert stats_keys.QUERIES_DONE not in stats
    assert stats[stats_keys.SPLIT_DETECTED_CAP] == 100
    assert "query cut short at the cap" in caplog.text
    assert "nothing lost" in caplog.text
    # Marked by the note, and by the loss (handed to Completeness).
    assert {k: v for k, v in stats.items() if k.startswith(stats_keys.COVERAGE_INCOMPLETE)} == {
        stats_keys.incomplete(CAT): 1, stats_keys.incomplete(8): 1}
    assert losses == [Loss(8, STALE_STOPPED, Query(8).key())]


def test_a_dropped_duplicate_is_counted_by_the_frontier_and_keeps_the_crawl_open() -> None:
    async def scenario() -> tuple[dict[str, Any], int]:
        crawler = crawler_for(project_settings(), cat_id=str(CAT))
        spider = crawler.spider
        (first,) = [request async for request in spider.start()]
        accounting = accounting_of(crawler)
        accounting.spider_idle()  # nothing pending: the crawl may close
        replayed = first.copy()
        replayed.meta[REPLAYED_META] = True
        for ignored in (Request("http://elsewhere.invalid/"), replayed):
            crawler.signals.send_catch_log(signals.request_dropped, request=ignored,
                                           spider=spider)
        accounting.spider_idle()  # neither is news to the frontier
        crawler.signals.send_catch_log(signals.request_dropped, request=first, spider=spider)
        with pytest.raises(DontCloseSpider):
            accounting.spider_idle()
        await until(lambda: crawler.stats.get_value(stats_keys.QUERIES_DONE),
                    what="the dropped page's query done")
        accounting.spider_idle()
        return crawler.stats.get_stats(), len(Completeness.of(crawler).losses("shutdown"))

    stats, stopped = asyncio.run(scenario())
    # Its query had that page only open: resolved by the drop, it is done, once.
    assert (stats[stats_keys.QUERIES], stats[stats_keys.QUERIES_DONE]) == (1, 1)
    assert stopped == 0, "a done query is no stop's loss"


def test_a_resume_reports_what_it_held_and_why_it_fetched_more(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tmapi_crawler")

    async def scenario() -> dict[str, Any]:
        crawler = crawler_for(project_settings(), cat_id=str(CAT))
        stats = crawler.stats
        stats.set_value(stats_keys.PAGES_KNOWN, 10)
        left = [PageContext(Query(CAT), page=page) for page in (3, 4)]
        crawler.signals.send_catch_log(tmapi_signals.crawl_resumed, crawl_id="c1",
                                       replay=Replay(left=left, held=2, saved=3))
        stats.set_value(stats_keys.PAGES, 8)
        stats.set_value(stats_keys.PAGES_FAILED, 1)
        await spider_closed(crawler)
        return stats.get_stats()

    stats = asyncio.run(scenario())
    assert (stats[stats_keys.RESUME_PAGES_HELD], stats[stats_keys.RESUME_CALLS_SAVED]) == (2, 3)
    assert ("Resuming crawl c1: 2 pages already held (replayed free, 3 calls saved), 8 pages "
            "left to fetch as far as is known") in caplog.text
    assert "The resume fetched 9 pages, 1 more than the 8 left at its start" in caplog.text

