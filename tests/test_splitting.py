"""Reaching past the result cap: the pure decisions, then real crawls of a capped sandbox.

The crawls check coverage against the sandbox's truth (which ignores the cap), the paid
requests against what an uncapped API would need, and the split stats against the sandbox's
own request records.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from itertools import pairwise
from math import ceil
from pathlib import Path
from typing import Any

import pytest
from scrapy.crawler import Crawler
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.project import get_project_settings

from tests.crawling import TOKEN, CrawlResult, crawl
from tmapi_crawler import api
from tmapi_crawler.distributed import entries
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.frontier.splitting import (
    Cell,
    SplitState,
    capped,
    decision_page,
    observed_cap,
    plan_split,
    price_cuts,
    walk,
    with_prices,
)
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import PRICE_POINT_CENTS, format_price
from tmapi_crawler.sandbox.process import SandboxProcess

D = Decimal
STEP = api.PRICE_STEP


# The pure decisions.


@pytest.mark.parametrize(("page", "items", "total", "has_next", "cap"), [
    (21, 0, 6000, False, 1000),  # empty past the cap
    (20, 50, 6000, False, 1000),  # the last reachable page says so
    (20, 30, 6000, True, 980),  # a short page is a last page
    (20, 50, 6000, True, None),  # more to come
    (20, 50, 1000, False, None),  # everything reached
    (3, 0, 100, False, None),  # an empty page past the end
    (1, 0, 6000, False, None),  # page 1 reveals nothing
    (21, 0, None, False, None),  # no total to compare with
])
def test_observed_cap(page: int, items: int, total: int | None, has_next: bool,
                      cap: int | None) -> None:
    assert observed_cap(page, 50, items=items, total_count=total, has_next_page=has_next) == cap


def test_a_total_equal_to_the_reach_counts_as_capped() -> None:
    assert capped(2000, 2000)
    assert capped(2001, 2000)
    assert not capped(1999, 2000)


def contiguous(slices: list[tuple[Decimal | None, Decimal | None]]) -> bool:
    """Each slice starts one step after the previous one ends: no overlap, no gap."""
    return all(a[1] is not None and b[0] == a[1] + STEP for a, b in pairwise(slices))


def test_cuts_sit_at_sample_quantiles_and_cover_the_range() -> None:
    sample = [D(n) / 4 for n in range(1, 51)]  # 0.25 .. 12.50
    slices = price_cuts((None, None), sample, total=6000, reach=1000)
    assert len(slices) == ceil(6000 / (1000 * 0.8))
    assert (slices[0][0], slices[-1][1]) == (None, None)
    assert contiguous(slices)
    assert all(end in sample for _, end in slices[:-1])
    # Quantiles: about the same share of the sample in every slice.
    counts = [sum(1 for p in sample if (lo or 0) <= p <= (hi or p)) for lo, hi in slices]
    assert max(counts) - min(counts) <= 2


def test_cuts_stay_inside_the_users_range() -> None:
    sample = [D(n) for n in range(1, 101)]
    slices = price_cuts((D(5), D(50)), sample, total=3000, reach=1000)
    assert (slices[0][0], slices[-1][1]) == (D(5), D(50))
    assert contiguous(slices)
    assert all(D(5) <= lo and hi <= D(50) for lo, hi in slices if lo and hi)


def test_a_price_that_fills_a_slice_alone_gets_its_own() -> None:
    sample = [D("9.9")] * 30 + [D(n) for n in range(20, 40)]
    slices = price_cuts((None, None), sample, total=6000, reach=1000)
    assert (D("9.9"), D("9.9")) in slices
    assert contiguous(slices)
    # At the bottom of the range: the point, then the rest.
    assert price_cuts((D("9.9"), None), [D("9.9")] * 50, total=5000, reach=1000) == [
        (D("9.9"), D("9.9")), (D("9.91"), None)]


def test_a_range_that_cannot_be_cut() -> None:
    assert price_cuts((D(1), D(2)), [D(5), D(6)], total=5000, reach=1000) == []
    assert price_cuts((None, D(0)), [D(0)] * 20, total=5000, reach=1000) == []


def test_slices_are_queries_spelled_like_a_users() -> None:
    query = Query(cat_id=7, sort="sales", free_shipping=True)
    cut = with_prices(query, D("9.90"), D("100"))
    assert (cut.price_start, cut.price_end) == ("9.9", "100")
    assert (cut.sort, cut.free_shipping) == ("sales", True)
    assert with_prices(query, None, D("0.50")).price_start is None


def test_a_walk_goes_on_from_the_last_reachable_price() -> None:
    up = Query(cat_id=1, sort="price_up", price_start="1")
    assert walk(up, D("7.5")) == (with_prices(up, D("7.5"), None),)
    # The whole reachable part at the start price: that price alone, then the rest.
    assert walk(up, D(1)) == (with_prices(up, D(1), D(1)), with_prices(up, D("1.01"), None))
    down = Query(cat_id=1, sort="price_down", price_end="20")
    assert walk(down, D(12)) == (with_prices(down, None, D(12)),)
    assert walk(down, D(20)) == (with_prices(down, D(20), D(20)),
                                 with_prices(down, None, D("19.99")))
    assert walk(Query(cat_id=1, sort="price_down", price_start="5", price_end="5.00"),
                D(5)) == (with_prices(down, D(5), D(5)),)


def test_a_walk_stops_where_the_price_filter_is_ignored() -> None:
    assert walk(Query(cat_id=1, sort="price_up", price_start="10"), D(3)) == ()
    assert walk(Query(cat_id=1, sort="price_up"), None) == ()


def test_the_fallbacks_after_price() -> None:
    point = Query(cat_id=1, price_start="9.9", price_end="9.90", new_arrival=True)
    split = plan_split(point, [D("9.9")] * 20, total=5000, reach=1000)
    assert split.how == "flag"
    assert split.queries == (
        Query(cat_id=1, price_start="9.9", price_end="9.90", new_arrival=True,
              support_dropshipping=True),
        Query(cat_id=1, price_start="9.9", price_end="9.90", new_arrival=True,
              support_dropshipping=False),
    )
    every_flag = Query(cat_id=1, sort="sales", price_start="9.9", price_end="9.9",
                       **dict.fromkeys(api.FLAG_FILTERS, False))
    split = plan_split(every_flag, [], total=5000, reach=1000)
    assert split.how == "sort"
    assert [q.sort for q in split.queries] == ["default", "price_up", "price_down"]
    # The API ignored the price filter: no more price cuts, even for a range.
    wide = Query(cat_id=1, price_start="1", price_end="50")
    assert plan_split(wide, [D(2), D(30)], total=5000, reach=1000).how == "price"
    assert plan_split(wide, [D(2), D(30)], total=5000, reach=1000, by_price=False).how == "flag"


def test_which_page_decides() -> None:
    assert decision_page(Query(cat_id=1, page_size=50), 1000) == 1
    assert decision_page(Query(cat_id=1, page_size=50, sort="price_up"), 1000) == 20
    assert decision_page(Query(cat_id=1, page_size=30, sort="price_down"), 1000) == 34
    point = Query(cat_id=1, sort="price_up", price_start="2", price_end="2")
    assert decision_page(point, 1000) == 1


def test_the_cap_is_detected_where_reached_and_bound_meet() -> None:
    state = SplitState()
    assert state.reach(2000) == 2000
    assert state.settled(2000)
    assert not state.settled(None)
    # Empty pages answered first, from the far end: only bounds, each tighter.
    assert state.observe(60, 50, items=0, total_count=6000, has_next_page=False) is None
    assert state.observe(30, 50, items=0, total_count=6000, has_next_page=False) is None
    assert (state.reach(None), state.reach(2000), state.reach(1000)) == (1450, 1450, 1000)
    assert not state.settled(2000)
    assert state.settled(1000)
    # A full page just below: the cap is reached, and detected.
    assert state.observe(29, 50, items=50, total_count=6000, has_next_page=True) == 1450
    assert state.detected_cap == 1450
    assert state.settled(2000)
    assert state.observe(31, 50, items=0, total_count=6000, has_next_page=False) is None
    # A total that said more than there was, in a query paging got past: no cap.
    overstated = SplitState()
    assert overstated.observe(30, 50, items=0, total_count=2000, has_next_page=False) is None
    assert overstated.observe(29, 50, items=50, total_count=2000, has_next_page=True) == 1450
    assert overstated.observe(31, 50, items=50, total_count=2000, has_next_page=True) is None
    assert (overstated.detected_cap, overstated.reach(None)) == (None, None)
    assert overstated.observe(3, 50, items=0, total_count=2000, has_next_page=False) is None
    assert overstated.reach(None) is None
    # A last page says the cap at once.
    last = SplitState()
    assert last.observe(20, 50, items=50, total_count=6000, has_next_page=False) == 1000
    assert last.detected_cap == last.reach(None) == 1000


def test_state_counts_the_pages_of_each_query() -> None:
    state = SplitState()
    state.page_created("q")
    state.page_created("q")
    assert not state.page_finished("q")
    assert state.page_finished("q")
    assert not state.page_finished("q")  # another worker's page: not ours to count
    cell = Cell(total=10, pending=4, ids={1, 2, 3})
    assert cell.unreachable == 7


def test_recursive_splitting_partitions_a_catalogue_cheaply() -> None:
    """Split a synthetic category as the spider would, page 1 being the sample, until every
    slice is reachable; one price holds more than the cap."""
    rng = random.Random(5)
    cents = [int(10 * 20_000 ** rng.random()) for _ in range(20_000)] + [990] * 1500
    rng.shuffle(cents)
    prices = [D(c) / 100 for c in cents]
    reach, page_size = 1000, 50
    leaves: list[Query] = []
    points: list[Query] = []
    probes = 0
    queue = [Query(cat_id=1, page_size=page_size)]
    while queue:
        query = queue.pop()
        start, end = query.price_start, query.price_end
        found = [p for p in prices if (start is None or p >= D(start))
                 and (end is None or p <= D(end))]
        if not capped(len(found), reach):
            leaves.append(query)
            continue
        split = plan_split(query, found[:page_size], total=len(found), reach=reach)
        if split.how != "price":
            points.append(query)
            continue
        probes += 1
        queue.extend(split.queries)
    assert [(q.price_start, q.price_end) for q in points] == [("9.9", "9.9")]
    ranges = sorted((D(q.price_start or 0), D(q.price_end or 10**9)) for q in [*leaves, *points])
    assert all(b[0] == a[1] + STEP for a, b in pairwise(ranges))
    pages = probes + sum(
        ceil(sum(1 for p in prices if D(q.price_start or 0) <= p <= D(q.price_end or 10**9))
             / page_size) for q in leaves)
    assert pages <= 1.1 * ceil(20_000 / page_size)


# Real crawls of a capped sandbox.

CAP = 1000
PAGE_SIZE = 50
BIG = 601  # several times the cap
SMALLER = 602  # a few times the cap, for quicker crawls
POINTED = 701  # most of it at one price
POINT_CAP = 100


@pytest.fixture(scope="module")
def capped_sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], result_cap=CAP, size={BIG: 6000, SMALLER: 3000}) as server:
        yield server


@pytest.fixture
def sandbox(capped_sandbox: SandboxProcess) -> SandboxProcess:
    capped_sandbox.reset()
    return capped_sandbox


def run(tmp_path: Path, sandbox: SandboxProcess, *arguments: str, cap: int = CAP) -> CrawlResult:
    result = crawl(tmp_path, f"page_size={PAGE_SIZE}", *arguments, base_url=sandbox.url,
                   store=False, feed=True, timeout=60,
                   # INFO: logging thousands of scraped products at DEBUG is most of the time.
                   settings={"TMAPI_RESULT_CAP": cap, "LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    return result


def collected(result: CrawlResult, **context: Any) -> set[int]:
    return {i["item_id"] for i in result.items
            if all(i["context"][k] == v for k, v in context.items())}


QUERY_FIELDS = ("cat_id", "sort", *api.PRICE_FILTERS, *api.FLAG_FILTERS)


def pages_by_query(sandbox: SandboxProcess) -> dict[tuple[Any, ...], list[int]]:
    """The billed pages of each distinct query the sandbox answered."""
    pages = defaultdict(list)
    for record in sandbox.stats()["records"]:
        if record.get("ok"):
            pages[tuple(record.get(name) for name in QUERY_FIELDS)].append(record["page"])
    return {query: sorted(numbers) for query, numbers in pages.items()}


def check_split_accounting(result: CrawlResult, sandbox: SandboxProcess, cap: int) -> int:
    """Every query the sandbox saw is a split probe (page 1 only) or a leaf paged exactly
    once through; the stats say the same. Returns the billed requests."""
    pages = pages_by_query(sandbox)
    split = leaves = 0
    for query, numbers in pages.items():
        total = sandbox.truth(**{k: v for k, v in zip(QUERY_FIELDS, query, strict=True)
                                 if v is not None})["total"]
        if total >= cap:
            assert numbers == [1], query
            split += 1
        else:
            assert numbers == list(range(1, max(1, ceil(total / PAGE_SIZE)) + 1)), query
            leaves += total
    billed = sum(map(len, pages.values()))
    assert billed == sandbox.stats()["pages_served"] == result.stat("tmapi/pages")
    assert result.stat("tmapi/pages/known") == billed
    assert result.stat("tmapi/split/queries") == result.stat("tmapi/split/by/price") == split
    assert result.stat("tmapi/split/extra_requests") == split
    roots = result.stat("tmapi/queries") - result.stat("tmapi/split/slices")
    assert result.stat("tmapi/queries") == result.stat("tmapi/queries/done") == len(pages)
    assert len(pages) == roots + result.stat("tmapi/split/slices")
    return billed


def test_a_category_several_times_the_cap_is_collected_within_budget(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    result = run(tmp_path, sandbox, f"cat_id={BIG}")
    truth = set(sandbox.truth(cat_id=BIG)["item_ids"])
    got = collected(result)
    assert len(got & truth) >= 0.995 * len(truth)
    assert got <= truth
    billed = check_split_accounting(result, sandbox, CAP)
    assert billed <= 1.5 * ceil(len(truth) / PAGE_SIZE)
    assert result.stat("tmapi/split/slices") >= ceil(len(truth) / CAP)
    assert "tmapi/split/unreachable" not in result.stats
    for item in result.items:  # each product carries the slice it was seen in
        filters = item["context"]["filters"]
        low, high = D(filters.get("price_start", 0)), D(filters.get("price_end", 10**9))
        assert low <= D(item["raw"]["price"]) <= high


def test_slices_stay_within_the_users_price_range(sandbox: SandboxProcess,
                                                  tmp_path: Path) -> None:
    result = run(tmp_path, sandbox, f"cat_id={BIG}", "price_start=5", "price_end=200")
    truth = set(sandbox.truth(cat_id=BIG, price_start="5", price_end="200")["item_ids"])
    assert len(truth) > 2 * CAP
    got = collected(result)
    assert len(got & truth) >= 0.995 * len(truth)
    assert got <= truth
    for query in pages_by_query(sandbox):
        start, end = D(query[2]), D(query[3])
        assert D(5) <= start <= end <= D(200), query
    billed = check_split_accounting(result, sandbox, CAP)
    assert billed <= 1.5 * ceil(len(truth) / PAGE_SIZE)


def test_price_sorted_queries_walk_past_the_cap(sandbox: SandboxProcess, tmp_path: Path) -> None:
    result = run(tmp_path, sandbox, f"cat_id={SMALLER}", "sort=price_up,price_down")
    truth = set(sandbox.truth(cat_id=SMALLER)["item_ids"])
    for sort in ("price_up", "price_down"):
        assert len(collected(result, sort=sort) & truth) >= 0.995 * len(truth)
    billed = sandbox.stats()["pages_served"]
    assert billed <= 1.5 * 2 * ceil(len(truth) / PAGE_SIZE)
    assert result.stat("tmapi/split/by/walk") >= 2 * (ceil(len(truth) / CAP) - 1)
    assert "tmapi/split/extra_requests" not in result.stats  # nothing fetched only to probe
    assert result.stat("tmapi/queries/done") == result.stat("tmapi/queries")


def test_the_cap_is_detected_when_not_configured(sandbox: SandboxProcess,
                                                 tmp_path: Path) -> None:
    result = run(tmp_path, sandbox, f"cat_id={SMALLER}", cap=0)
    truth = set(sandbox.truth(cat_id=SMALLER)["item_ids"])
    assert len(collected(result) & truth) >= 0.995 * len(truth)
    assert result.stat("tmapi/split/detected_cap") == CAP
    assert f"Paging reaches only {CAP} results" in result.log
    # The price of not knowing: the first query's pages past the cap, asked for before any
    # answer showed the cap, come back empty; page 1 is then fetched again to split it.
    assert result.stat("tmapi/pages/empty") == ceil(len(truth) / PAGE_SIZE) - CAP // PAGE_SIZE
    assert result.stat("tmapi/queries/done") == result.stat("tmapi/queries")


@pytest.fixture(scope="module")
def pointed_sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], result_cap=POINT_CAP, size={POINTED: 5000},
                        price_point_share=0.6) as server:
        yield server


def test_a_price_point_over_the_cap_is_handled_and_its_loss_reported(
    pointed_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    sandbox = pointed_sandbox
    sandbox.reset()
    point = format_price(PRICE_POINT_CENTS)
    at_point = set(sandbox.truth(cat_id=POINTED, price_start=point, price_end=point)["item_ids"])
    assert len(at_point) > 10 * POINT_CAP
    result = run(tmp_path, sandbox, f"cat_id={POINTED}", cap=POINT_CAP)
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


def test_a_slice_is_an_ordinary_request_for_the_cluster_queue() -> None:
    """Distributed workers queue page specs and rebuild requests from them: a slice's request,
    its meta included, comes back the same."""
    settings = get_project_settings()
    spidercls = get_spider_loader(settings).load("category_items")
    spider = spidercls.from_crawler(Crawler(spidercls, settings), cat_id="5")
    cell = Query(cat_id=5, sort="sales", price_start="9.9", price_end="9.9", new_arrival=False)
    context = PageContext(cell, by_price=False, cell=CellRef(cell.key(), 3), refetch=True)
    request = spider.page_request(context)
    context_again, priority = entries.decode(entries.encode(context, request.priority))
    again = spider.page_request(context_again)
    assert priority == request.priority
    assert (again.url, again.meta, again.dont_filter) == (request.url, request.meta, True)
    assert again.callback == spider.parse
