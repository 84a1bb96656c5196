"""Whole crawls of a sandbox that answers like the real API: coverage against its truth, paid
calls against the ideal (⌈products / page size⌉), and the stats against its request records.

The frontier's decisions have their own tests (``test_frontier``); these check the wiring of
every component of a crawl, in-process (``tests/inprocess.py``): the command's part is
``test_crawl``'s.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from math import ceil
from pathlib import Path
from typing import Any

import pytest
from scrapy.crawler import Crawler
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from tests.crawling import TOKEN, CrawlResult
from tests.inprocess import crawl_in_process
from tmapi_crawler import api
from tmapi_crawler.distributed import entries
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import PRICE_POINT_CENTS
from tmapi_crawler.sandbox.config import RUNTIME_SETTINGS, SandboxConfig
from tmapi_crawler.sandbox.items import format_price
from tmapi_crawler.sandbox.process import SandboxProcess

D = Decimal
REACH = 2000
CAPPED = 601  # 6 times the reach
WALKED = 602
SMALL = 603  # under the reach
POINTED = 701  # most of it at one price
POINT_CAP = 100
DEFAULTS = {name: getattr(SandboxConfig(), name) for name in RUNTIME_SETTINGS}
QUERY_FIELDS = ("cat_id", "sort", *api.PRICE_FILTERS, *api.FLAG_FILTERS)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], result_cap=REACH,
                        size={CAPPED: 12_000, WALKED: 4100, SMALL: 610}) as process:
        yield process


@pytest.fixture
def sandbox(server: SandboxProcess) -> Iterator[SandboxProcess]:
    """The shared sandbox with fresh counters; runtime settings restored afterwards."""
    server.reset()
    yield server
    server.configure(**{**DEFAULTS, "result_cap": REACH})


def run(tmp_path: Path, sandbox: SandboxProcess, *arguments: str,
        **settings: Any) -> CrawlResult:
    result = crawl_in_process(
        tmp_path, *arguments, base_url=sandbox.url, feed=True,
        # INFO: logging thousands of scraped products at DEBUG is most of the time.
        settings={"TMAPI_RESULT_CAP": REACH, "LOG_LEVEL": "INFO", **settings})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    return result


def collected(result: CrawlResult, **context: Any) -> set[int]:
    return {i["item_id"] for i in result.items
            if all(i["context"][k] == v for k, v in context.items())}


def pages_by_query(sandbox: SandboxProcess) -> dict[tuple[Any, ...], list[int]]:
    """The billed pages of each distinct query (page size aside) the sandbox answered."""
    pages = defaultdict(list)
    for record in sandbox.stats()["records"]:
        if record.get("ok"):
            pages[tuple(record.get(name) for name in QUERY_FIELDS)].append(record["page"])
    return {query: sorted(numbers) for query, numbers in pages.items()}


def check_accounting(result: CrawlResult, sandbox: SandboxProcess) -> int:
    """No page billed twice; the stats say what the sandbox saw. Returns the billed calls."""
    pages = pages_by_query(sandbox)
    for query, numbers in pages.items():
        assert len(numbers) == len(set(numbers)), query
    billed = sum(map(len, pages.values()))
    assert billed == sandbox.stats()["pages_served"] == result.stat("tmapi/pages")
    assert result.stat("tmapi/pages/known") == billed
    assert result.stat("tmapi/queries") == result.stat("tmapi/queries/done") == len(pages)
    return billed


@pytest.mark.parametrize("totals", ["true", "capped"])
def test_a_category_over_the_reach_costs_at_most_a_tenth_more_than_ideal(
    sandbox: SandboxProcess, tmp_path: Path, totals: str
) -> None:
    sandbox.configure(totals=totals)
    result = run(tmp_path, sandbox, f"cat_id={CAPPED}")
    truth = set(sandbox.truth(cat_id=CAPPED)["item_ids"])
    got = collected(result)
    assert len(got & truth) >= 0.995 * len(truth)
    assert got <= truth
    billed = check_accounting(result, sandbox)
    assert billed <= 1.10 * ceil(len(truth) / 20)
    assert result.stat("tmapi/split/by/walk") >= ceil(len(truth) / REACH) - 1
    assert "tmapi/split/unreachable" not in result.stats
    for item in result.items:  # each product carries the slice it was seen in
        filters = item["context"]["filters"]
        low, high = D(filters.get("price_start", 0)), D(filters.get("price_end", 10**9))
        assert low <= D(str(item["price"])) <= high


def test_slices_stay_within_the_users_price_range(sandbox: SandboxProcess,
                                                  tmp_path: Path) -> None:
    result = run(tmp_path, sandbox, f"cat_id={CAPPED}", "price_start=0.5", "price_end=200")
    truth = set(sandbox.truth(cat_id=CAPPED, price_start="0.5", price_end="200")["item_ids"])
    assert len(truth) > REACH
    got = collected(result)
    assert len(got & truth) >= 0.995 * len(truth)
    assert got <= truth
    for query in pages_by_query(sandbox):
        start, end = D(query[2]), D(query[3])
        assert D("0.5") <= start <= end <= D(200), query
    assert check_accounting(result, sandbox) <= 1.10 * ceil(len(truth) / 20)


def test_price_sorted_queries_walk_past_the_reach(sandbox: SandboxProcess,
                                                 tmp_path: Path) -> None:
    sandbox.configure(totals="capped")
    result = run(tmp_path, sandbox, f"cat_id={WALKED}", "sort=price_up,price_down")
    truth = set(sandbox.truth(cat_id=WALKED)["item_ids"])
    for sort in ("price_up", "price_down"):
        assert len(collected(result, sort=sort) & truth) >= 0.995 * len(truth)
    assert check_accounting(result, sandbox) <= 1.10 * 2 * ceil(len(truth) / 20)
    assert "tmapi/split/extra_requests" not in result.stats  # nothing fetched only to probe


def test_the_cap_is_learned_when_not_configured(sandbox: SandboxProcess,
                                               tmp_path: Path) -> None:
    sandbox.configure(result_cap=1000)
    result = run(tmp_path, sandbox, f"cat_id={WALKED}", "page_size=50", TMAPI_RESULT_CAP=0)
    truth = set(sandbox.truth(cat_id=WALKED)["item_ids"])
    assert len(collected(result) & truth) >= 0.995 * len(truth)
    assert result.stat("tmapi/split/detected_cap") == 1000
    assert "Paging reaches only 1000 results" in result.log
    assert result.stat("tmapi/queries/done") == result.stat("tmapi/queries")


MODES = {
    "short pages": {"short_page_rate": 0.05},
    "promoted items": {"promoted": 3},
    "string ids and totals": {"string_values": True},
    "page size clamped": {"page_size_limit": 20},
    "a total of 1e12": {"claimed_total": "1e12"},
    "a total of 2^63": {"claimed_total": str(2**63)},
    "a string total": {"claimed_total": '"2465"'},
    "a negative total": {"claimed_total": "-5"},
    "the last page forever": {"repeat_last_page": True},
}


@pytest.mark.parametrize("mode", MODES)
def test_each_way_the_real_api_answers_is_crawled_whole_and_cheaply(
    sandbox: SandboxProcess, tmp_path: Path, mode: str
) -> None:
    sandbox.configure(**MODES[mode])
    page_size = 50 if mode == "page size clamped" else 20
    result = run(tmp_path, sandbox, f"cat_id={SMALL}", f"page_size={page_size}",
                 TMAPI_QUERY_WINDOW=4)
    truth = set(sandbox.truth(cat_id=SMALL)["item_ids"])
    assert collected(result) == truth
    billed = sandbox.stats()["pages_served"]
    ideal = ceil(sandbox.truth(cat_id=SMALL)["total"] / 20)
    # A total that says more than there is may cost a walk, its look-ahead page and a
    # window past the end; a repeated page a few stale pages; promoted items one page.
    assert billed <= ideal + 1 + 4 + 3, billed
    assert result.stat("tmapi/pages") == billed
    for query, numbers in pages_by_query(sandbox).items():
        assert len(numbers) == len(set(numbers)), query
    if mode == "the last page forever":
        assert result.stat("tmapi/paging/stopped_queries") == 1
        assert "stopped paging it" in result.log
    if mode == "page size clamped":
        assert result.stat("tmapi/paging/resized_queries") == 1
    if mode == "short pages":
        assert result.stat("tmapi/paging/short_pages") > 0


def test_pages_given_up_on_still_move_the_window(sandbox: SandboxProcess,
                                                 tmp_path: Path) -> None:
    sandbox.configure(garbage_rate=0.2)
    result = run(tmp_path, sandbox, f"cat_id={SMALL}", TMAPI_RETRY_TIMES=0,
                 TMAPI_QUERY_WINDOW=2)
    failed = result.stat("tmapi/pages/failed")
    assert failed > 0
    assert result.stat("tmapi/pages") + failed == ceil(610 / 20)
    assert result.stat("tmapi/queries/done") == 1


@pytest.fixture(scope="module")
def pointed_sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], result_cap=POINT_CAP, size={POINTED: 5000},
                        price_point_share=0.6) as server:
        yield server


def test_a_price_point_over_the_reach_is_handled_and_its_loss_reported(
    pointed_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    sandbox = pointed_sandbox
    sandbox.reset()
    point = format_price(PRICE_POINT_CENTS)
    at_point = set(sandbox.truth(cat_id=POINTED, price_start=point, price_end=point)["item_ids"])
    assert len(at_point) > 10 * POINT_CAP
    result = run(tmp_path, sandbox, f"cat_id={POINTED}", "page_size=50",
                 TMAPI_RESULT_CAP=POINT_CAP)
    truth = set(sandbox.truth(cat_id=POINTED)["item_ids"])
    got = collected(result)
    assert got <= truth
    # Everything not at the point is reached; at the point, filters and sorts were used.
    assert truth - at_point <= got
    assert result.stat("tmapi/split/by/flag") > 0
    assert result.stat("tmapi/split/by/sort") > 0
    seen = pages_by_query(sandbox)
    assert {q[1] for q in seen} == set(api.SORTS)
    assert any(q[QUERY_FIELDS.index("new_arrival")] is False for q in seen)
    # What was missed is reported exactly, and named.
    missed = len(truth - got)
    assert missed > 0
    assert result.stat("tmapi/split/unreachable") == missed
    warnings = [line for line in result.log.splitlines()
                if "WARNING" in line and "out of reach" in line]
    assert warnings
    assert all(f"price_start={D(point).normalize()}&price_end=" in line for line in warnings)
    reported = [int(m.group(1)) for line in warnings
                if (m := re.search(r": (\d+) of its \d+ results are out of reach", line))]
    assert sum(reported) == missed
    assert result.stat(f"tmapi/coverage/incomplete/{POINTED}") > 0
    assert result.stat("tmapi/queries/done") == result.stat("tmapi/queries")
    assert "tmapi/split/unsettled_cells" not in result.stats


def test_a_page_is_an_ordinary_request_for_the_cluster_queue() -> None:
    """Distributed workers queue requests as JSON: a page, its context included, survives."""
    settings = get_project_settings()
    spidercls = get_spider_loader(settings).load("category_items")
    spider = spidercls.from_crawler(Crawler(spidercls, settings), cat_id="5")
    cell = Query(cat_id=5, sort="sales", price_start="9.9", price_end="9.9", new_arrival=False)
    context = PageContext(cell, page=3, last=9, size=20, ahead=9, by_price=False,
                          cell=CellRef(cell.key(), 3000), depth=4)
    request = spider.page_request(context)
    context_again, priority = entries.decode(entries.encode(context, request.priority))
    again = spider.page_request(context_again)
    assert (again.url, again.meta, again.priority) == (request.url, request.meta, priority)
    assert PageContext.from_dict(again.meta["tmapi"]) == context
    assert again.callback == spider.parse
    assert again.errback == spider.page_failed
