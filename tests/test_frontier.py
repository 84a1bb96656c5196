"""The frontier, driven directly: no Crawler, no HTTP.

First single decisions from hand-made answers, then whole crawls in-process (``simulated``),
answered by the sandbox's own page builder in every mode it has, checked against its truth
and against the ideal number of calls (⌈products / page size⌉).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from decimal import Decimal
from math import ceil
from typing import Any, TypeVar

import pytest

from tests.simulated import answer, crawl, summarise
from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.completeness import STALE_STOPPED, UNREACHABLE, Loss
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.frontier.decisions import (
    STALE_LIMIT,
    Decision,
    FrontierSettings,
    priority,
    stale_below,
)
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.state import MemoryState
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import PRICE_POINT_CENTS
from tmapi_crawler.sandbox.catalog import Query as CatalogQuery
from tmapi_crawler.sandbox.config import SandboxConfig
from tmapi_crawler.sandbox.items import format_price
from tmapi_crawler.sandbox.server import Sandbox

T = TypeVar("T")
D = Decimal
CAT = 7
REACH = 2000


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def frontier(window: int = 4, reach: int | None = REACH, **settings: Any) -> Frontier:
    return Frontier(FrontierSettings(reach=reach, window=window, **settings))


def ids(first: int, count: int) -> tuple[int, ...]:
    return tuple(range(first, first + count))


def page(items: int = 20, *, total: int | None = 1000, more: bool | None = True,
         first_id: int = 1, prices: tuple[Decimal | None, ...] = (),
         size: int | None = None) -> PageSummary:
    return PageSummary(items=items, ids=ids(first_id, items), prices=prices,
                       total_count=total, has_next_page=more, page_size=size)


def pages_of(decision: Decision) -> list[int]:
    return [context.page for context in decision.follow]


def begin(f: Frontier, query: Query) -> PageContext:
    (first,) = run(f.plan([query])).follow
    return first


def truth(config: SandboxConfig, **filters: Any) -> set[int]:
    sandbox = Sandbox(config)
    query = sandbox._applied(CatalogQuery.of(CAT, **filters))
    return set(sandbox.catalog.truth(query, 0, config.short_page_rate).item_ids)


def products(config: SandboxConfig) -> int:
    return len(Sandbox(config).catalog.results(CatalogQuery(CAT)))


def ideal(config: SandboxConfig, page_size: int = 20) -> int:
    return ceil(products(config) / page_size)


# Paging, one decision at a time.


def test_page_one_asks_for_a_window_and_each_page_for_one_more() -> None:
    f = frontier(window=4)
    first = begin(f, Query(cat_id=CAT))
    after_one = run(f.on_page(first, page(total=1000)))
    assert pages_of(after_one) == [2, 3, 4, 5]
    assert all(c.last == 50 for c in after_one.follow)
    third = after_one.follow[1]
    assert pages_of(run(f.on_page(third, page(first_id=41)))) == [7]
    assert pages_of(run(f.on_page(after_one.follow[0], page(first_id=21)))) == [6]


def test_failed_pages_move_the_window_and_dropped_copies_do_not() -> None:
    f = frontier(window=4)
    second = run(f.on_page(begin(f, Query(cat_id=CAT)), page(total=1000))).follow[0]
    assert pages_of(run(f.on_lost(second))) == [6]
    lost_first = run(f.on_lost(begin(f, Query(cat_id=CAT + 1))))
    assert lost_first.follow == []
    assert lost_first.done == [Query(cat_id=CAT + 1).key()]
    dropped = run(f.on_dropped(second.at(9, 50)))
    assert dropped.follow == []


def test_the_window_bounds_pages_out_whatever_order_answers_come_in() -> None:
    config = SandboxConfig(sizes={CAT: 3000}, result_cap=0)
    result = crawl(config, [Query(cat_id=CAT)], reach=None, window=5, concurrency=12, seed=3)
    assert result.peak_outstanding == {Query(cat_id=CAT).key(): 5}
    assert result.calls == ideal(config)
    assert result.ids == truth(config)


def test_a_query_is_done_when_its_last_page_is_resolved() -> None:
    config = SandboxConfig(sizes={CAT: 190})
    result = crawl(config, [Query(cat_id=CAT)], window=3)
    assert result.done == [Query(cat_id=CAT).key()]
    assert result.counters[stats_keys.QUERIES] == result.counters[stats_keys.QUERIES_DONE] == 1
    assert result.counters[stats_keys.PAGES_KNOWN] == result.calls == 10


def test_priorities_finish_queries_under_way_before_beginning_new_ones() -> None:
    query = Query(cat_id=CAT)
    assert priority(PageContext(query)) == 0
    assert priority(PageContext(query, page=2)) > 0
    split_first = PageContext(query, depth=1)
    assert priority(split_first) > priority(PageContext(query, page=5, depth=1))
    assert priority(PageContext(query, page=5, depth=1)) < priority(PageContext(query, page=5))


# Bad paging answers.


@pytest.mark.parametrize("claimed", ["1e12", str(2**63), "-5", '"2465"', '"many"', "null"])
@pytest.mark.parametrize("reach", [REACH, None])
def test_whatever_the_total_says_calls_and_memory_stay_bounded(claimed: str,
                                                               reach: int | None) -> None:
    config = SandboxConfig(sizes={CAT: 500}, claimed_total=claimed,
                           result_cap=reach or 0)
    state = MemoryState()
    window = 8
    result = crawl(config, [Query(cat_id=CAT)], reach=reach, window=window,
                   frontier=Frontier(FrontierSettings(reach=reach, window=window), state))
    assert result.ids == truth(config)
    # A total that says more than there is costs at most a window past the end, a walk's
    # look-ahead pages, and (without a reach) the pages of a cap wrongly learned from it.
    assert result.calls <= 2 * ideal(config) + 2 * window + 4
    assert max(result.peak_outstanding.values()) <= window
    assert state.footprint()[1] == 0  # no ids kept once every query is done


def test_a_short_page_is_neither_an_end_nor_a_cap() -> None:
    f = frontier(window=2, reach=None)
    first = begin(f, Query(cat_id=CAT))
    second, _ = run(f.on_page(first, page(total=100))).follow
    decision = run(f.on_page(second, page(items=18, total=100, first_id=21)))
    assert pages_of(decision) == [4]
    assert decision.cap is None
    assert decision.counters[stats_keys.PAGING_SHORT] == 1
    assert run(f.state.get("cap|bound")) is None


def test_pages_that_repeat_earlier_pages_stop_the_query_after_a_few() -> None:
    config = SandboxConfig(sizes={CAT: 500}, repeat_last_page=True, result_cap=0)
    result = crawl(config, [Query(cat_id=CAT)], reach=None, window=6)
    assert result.ids == truth(config)
    assert result.calls <= ideal(config) + STALE_LIMIT + 6
    assert result.counters[stats_keys.PAGING_STALE] == STALE_LIMIT
    assert result.counters[stats_keys.PAGING_STOPPED] == 1
    (note,) = [n for n in result.notes if "repeated" in n.message]
    assert note.cat_id == CAT
    assert Query(cat_id=CAT).key() in note.message
    # The crawl's record learns it did not read the query to its end.
    assert result.losses == [Loss(CAT, STALE_STOPPED, Query(cat_id=CAT).key())]


def test_a_page_bringing_a_tenth_of_a_page_new_is_not_stale() -> None:
    assert [stale_below(size) for size in (1, 9, 10, 20, 50, 100)] == [1, 1, 1, 2, 5, 10]
    f = frontier(window=2)
    first = begin(f, Query(cat_id=CAT))
    second, third = run(f.on_page(first, page(total=200))).follow
    # 18 of page 2's 20 were on page 1: 2 new, not stale; page 3 brings 1 new: stale.
    fresh = run(f.on_page(second, page(first_id=3, total=200)))
    assert stats_keys.PAGING_STALE not in fresh.counters
    repeated = run(f.on_page(third, page(first_id=4, total=200)))
    assert repeated.counters[stats_keys.PAGING_STALE] == 1


def test_a_page_past_the_total_reads_on_at_the_pace_of_its_new_products() -> None:
    f = frontier(window=3)
    first = begin(f, Query(cat_id=CAT))
    follow = run(f.on_page(first, page(total=60))).follow

    def slotted(first_id: int) -> PageSummary:  # 11 promoted items, then 9 of the listing
        return PageSummary(items=20, ids=(*ids(1, 11), *ids(first_id, 9)), total_count=60,
                           has_next_page=True)

    assert pages_of(run(f.on_page(follow[0], slotted(21)))) == []
    # Page 3, the last the total implies, says more: 60 products at 9 a page end at page 7.
    decision = run(f.on_page(follow[1], slotted(30)))
    assert pages_of(decision) == [4, 5, 6]
    assert all(c.last == 7 for c in decision.follow)
    assert decision.counters[stats_keys.PAGES_KNOWN] == 4


def test_a_page_repeated_in_the_middle_counts_but_one_alone_stops_nothing() -> None:
    f = frontier(window=3)
    first = begin(f, Query(cat_id=CAT))
    follow = run(f.on_page(first, page(total=200))).follow
    again = run(f.on_page(follow[0], page(first_id=1, total=200)))  # page 2 = page 1 again
    assert again.counters[stats_keys.PAGING_STALE] == 1
    assert pages_of(again) == [5]


def test_promoted_items_repeating_across_pages_stop_nothing() -> None:
    config = SandboxConfig(sizes={CAT: 600}, promoted=3)
    result = crawl(config, [Query(cat_id=CAT)], window=4)
    assert result.ids == truth(config)
    assert result.sightings > len(result.ids)  # the promoted ones came back
    assert stats_keys.PAGING_STALE not in result.counters
    # Promoted slots push the listing one page past what its total implies.
    assert result.calls == ideal(config) + 1


def test_a_smaller_page_size_served_replans_the_query_at_that_size() -> None:
    config = SandboxConfig(sizes={CAT: 1000}, page_size_limit=20)
    result = crawl(config, [Query(cat_id=CAT, page_size=50)], window=6, concurrency=4)
    assert result.ids == truth(config)
    asked = Query(cat_id=CAT, page_size=50).key()
    served = Query(cat_id=CAT, page_size=20).key()
    assert result.pages[0] == (asked, 1)
    assert sorted(p for key, p in result.pages if key == served) == list(range(2, 51))
    assert result.calls == ideal(config)
    assert result.counters[stats_keys.PAGING_RESIZED] == 1


def test_string_ids_and_totals_are_read() -> None:
    config = SandboxConfig(sizes={CAT: 3000}, string_values=True, totals="capped")
    result = crawl(config, [Query(cat_id=CAT)], window=8)
    assert result.ids == truth(config)
    assert result.counters[stats_keys.split_by("walk")] >= 1  # "2000" was read as the reach


# Past the reach.


@pytest.mark.parametrize("totals", ["true", "capped"])
@pytest.mark.parametrize("size", [5000, 30_000])
def test_a_category_over_the_reach_costs_at_most_a_tenth_more_than_ideal(
        totals: str, size: int) -> None:
    config = SandboxConfig(sizes={CAT: size}, result_cap=REACH, totals=totals)
    result = crawl(config, [Query(cat_id=CAT)], window=8)
    expected = truth(config)
    assert len(result.ids & expected) >= 0.995 * len(expected)
    assert result.ids <= expected
    assert result.calls <= 1.10 * ideal(config)
    assert stats_keys.SPLIT_UNREACHABLE not in result.counters
    assert result.losses == []  # read whole: nothing for the crawl's record


@pytest.mark.parametrize("totals", ["true", "capped"])
def test_queries_under_the_reach_cost_exactly_the_ideal(totals: str) -> None:
    config = SandboxConfig(sizes={CAT: 1999, CAT + 2: 40, CAT + 4: 0}, result_cap=REACH,
                           totals=totals)
    queries = [Query(cat_id=c) for c in (CAT, CAT + 2, CAT + 4)]
    result = crawl(config, queries, window=8)
    assert result.calls == ceil(1999 / 20) + 2 + 1
    assert stats_keys.SPLIT_QUERIES not in result.counters


def test_a_capped_query_is_walked_by_price_from_its_first_page() -> None:
    f = frontier(window=4, reach=100)
    first = begin(f, Query(cat_id=CAT))
    decision = run(f.on_page(first, page(total=100, prices=(D(1),) * 20)))
    walk, *window = decision.follow
    assert walk.query == Query(cat_id=CAT, sort="price_up")
    assert (walk.page, walk.depth) == (1, 1)
    assert decision.counters[stats_keys.split_by("walk")] == 1
    assert decision.counters[stats_keys.SPLIT_EXTRA_REQUESTS] == 1
    assert decision.done == [Query(cat_id=CAT).key()]
    # The walk holds what the query held, the reach: its window and its last reachable page,
    # ahead of the window, are asked for with its page 1 rather than one round trip later.
    assert [c.page for c in window] == [2, 3, 5]
    assert all(c.query == walk.query and (c.last, c.ahead) == (5, 5) for c in decision.follow)
    assert decision.counters[stats_keys.PAGES_KNOWN] == 5
    # Its page 1 then asks for what it would have asked for last: the window's next page.
    prices = tuple(D(n) / 100 for n in range(100, 120))
    walked = run(f.on_page(walk, page(total=100, prices=prices)))
    assert pages_of(walked) == [4]
    assert walked.counters[stats_keys.PAGES_KNOWN] == 0
    # Its last reachable page says where the next walk starts: its last price.
    last = run(f.on_page(window[-1], page(total=100, first_id=81,
                                                prices=tuple(D(n) for n in range(3, 23)))))
    (following,) = [c for c in last.follow if c.query != walk.query]
    assert following.query == Query(cat_id=CAT, sort="price_up", price_start="22")
    assert following.depth == 2
    assert pages_of(last) == [1]  # the look-ahead page moves no window


def test_a_walk_shorter_than_its_window_asks_for_every_page_once_and_ends() -> None:
    f = frontier(window=8, reach=100)
    decision = run(f.on_page(begin(f, Query(cat_id=CAT)), page(total=100, prices=(D(1),) * 20)))
    assert pages_of(decision) == [1, 2, 3, 4, 5]
    asked = []
    for n, context in enumerate(decision.follow):
        prices = tuple(D(100 * n + i) for i in range(20))
        answered = run(f.on_page(context, page(total=100, first_id=20 * n + 1, prices=prices)))
        asked += [c.page for c in answered.follow if c.query == context.query]
    assert asked == []  # nothing asked twice, nothing past the reach
    assert decision.follow[0].query.key() in answered.done


def test_a_price_crowding_the_last_reachable_page_gets_a_query_of_its_own() -> None:
    f = frontier(window=2, reach=40)
    walk = begin(f, Query(cat_id=CAT, sort="price_up", price_start="1"))
    ahead = run(f.on_page(walk, page(total=40, prices=(D(1),) * 20))).follow[0]
    decision = run(f.on_page(ahead, page(total=40, first_id=21, prices=(D("9.9"),) * 20)))
    # That price and the next fen (a price between them, 9.905, is in neither of two fen
    # points), then the rest from the next fen on, read twice rather than lost.
    assert {(c.query.price_start, c.query.price_end) for c in decision.follow} == {
        ("9.9", "9.91"), ("9.91", None)}


def test_a_price_over_the_reach_is_split_by_flags_then_sorts_and_its_loss_counted() -> None:
    config = SandboxConfig(sizes={CAT: 5000}, result_cap=100, price_point_share=0.6)
    result = crawl(config, [Query(cat_id=CAT, page_size=50)], reach=100, window=4)
    expected = truth(config)
    point = format_price(PRICE_POINT_CENTS)
    at_point = truth(config, price_start=point, price_end=point)
    assert result.ids <= expected
    assert expected - at_point <= result.ids
    assert result.counters[stats_keys.split_by("flag")] > 0
    assert result.counters[stats_keys.split_by("sort")] > 0
    missed = len(expected - result.ids)
    assert missed > 0
    assert result.counters[stats_keys.SPLIT_UNREACHABLE] == missed
    warned = [n for n in result.notes if "out of reach" in n.message]
    assert warned
    assert all(n.cat_id == CAT and "price_start=9.9&price_end=9.9" in n.message
               for n in warned)
    # Each part out of reach is a loss for the crawl's record, with how many it missed.
    assert result.losses
    assert {(loss.cat_id, loss.reason) for loss in result.losses} == {(CAT, UNREACHABLE)}
    assert sum(loss.unreached or 0 for loss in result.losses) == missed
    assert all("price_start=9.9&price_end=9.9" in loss.query for loss in result.losses)
    assert stats_keys.SPLIT_UNSETTLED_CELLS not in result.counters
    assert result.counters[stats_keys.QUERIES] == result.counters[stats_keys.QUERIES_DONE]


def test_with_capped_totals_a_cells_loss_is_said_to_be_unknown() -> None:
    config = SandboxConfig(sizes={CAT: 5000}, result_cap=100, price_point_share=0.6,
                           totals="capped")
    result = crawl(config, [Query(cat_id=CAT, page_size=50)], reach=100, window=4)
    assert stats_keys.SPLIT_UNREACHABLE not in result.counters
    assert result.counters[stats_keys.SPLIT_UNREACHABLE_UNKNOWN] > 0
    assert any("is unknown" in n.message and n.cat_id == CAT for n in result.notes)
    assert len(result.losses) == result.counters[stats_keys.SPLIT_UNREACHABLE_UNKNOWN]
    assert {(loss.cat_id, loss.reason) for loss in result.losses} == {(CAT, UNREACHABLE)}


def test_a_walk_whose_last_reachable_page_shows_no_price_is_a_loss() -> None:
    f = frontier(window=2, reach=40)
    walk = begin(f, Query(cat_id=CAT, sort="price_up", price_start="1"))
    ahead = run(f.on_page(walk, page(total=100, prices=(D(1),) * 20))).follow[0]
    decision = run(f.on_page(ahead, page(total=100, first_id=21, prices=(None,) * 20)))
    assert decision.losses == [Loss(CAT, UNREACHABLE, walk.query.key(), 100 - 40)]
    assert decision.counters[stats_keys.SPLIT_UNREACHABLE] == 60


# Whole fen.


def test_walk_edges_are_whole_fen_rounded_so_a_price_between_is_read_twice() -> None:
    f = frontier(window=2, reach=40)
    up = begin(f, Query(cat_id=CAT, sort="price_up", price_start="1"))
    ahead = run(f.on_page(up, page(total=100, prices=(D(1),) * 20))).follow[0]
    prices = (*(D(2),) * 19, D("9.995"))
    decision = run(f.on_page(ahead, page(total=100, first_id=21, prices=prices)))
    (following,) = [c for c in decision.follow if c.query != up.query]
    assert (following.query.price_start, following.query.price_end) == ("9.99", None)
    down = begin(f, Query(cat_id=CAT, sort="price_down", price_end="50"))
    ahead = run(f.on_page(down, page(total=100, prices=(D(50),) * 20))).follow[0]
    decision = run(f.on_page(ahead, page(total=100, first_id=21,
                                         prices=(*(D(40),) * 19, D("9.995")))))
    (following,) = [c for c in decision.follow if c.query != down.query]
    assert (following.query.price_start, following.query.price_end) == (None, "10")


@pytest.mark.parametrize("sort", ["default", "price_up", "price_down"])
def test_a_walk_over_three_decimal_prices_reads_them_all_and_sends_whole_fen(sort: str) -> None:
    config = SandboxConfig(sizes={CAT: 5000}, result_cap=400, three_decimal_share=0.3)
    result = crawl(config, [Query(cat_id=CAT, sort=sort)], reach=400, window=8)
    assert result.ids == truth(config)
    assert result.counters[stats_keys.split_by("walk")] >= 5000 // 400
    bounds = [D(value) for key, _ in result.pages for name, value in
              (part.split("=") for part in key.split("&")) if name in api.PRICE_FILTERS]
    assert bounds
    assert all(price == price.quantize(api.PRICE_STEP) for price in bounds)
    assert result.calls <= 1.10 * ideal(config)


def test_a_crowded_three_decimal_price_is_read_with_its_neighbours_or_its_loss_said() -> None:
    """Most products at 9.90 or 9.905, more than the reach: every product elsewhere is read,
    and what no split reaches is counted exactly — none falls between two fen unsaid."""
    config = SandboxConfig(sizes={CAT: 5000}, result_cap=100, price_point_share=0.6,
                           three_decimal_share=0.5)
    result = crawl(config, [Query(cat_id=CAT, page_size=50)], reach=100, window=4)
    expected = truth(config)
    near = truth(config, price_start="9.9", price_end="9.91")
    assert expected - near <= result.ids
    missed = len(expected - result.ids)
    assert missed > 0
    assert result.counters[stats_keys.SPLIT_UNREACHABLE] == missed
    assert sum(loss.unreached or 0 for loss in result.losses) == missed


def test_an_ignored_price_filter_is_seen_in_the_prices() -> None:
    config = SandboxConfig(sizes={CAT: 5000}, ignore_price_filter=True, totals="capped")
    result = crawl(config, [Query(cat_id=CAT)], window=8)
    assert result.counters[stats_keys.SPLIT_PRICE_IGNORED] >= 1
    assert result.counters[stats_keys.split_by("flag")] >= 1
    assert sum("ignores the price filter" in n.message for n in result.notes) == 1
    expected = truth(config)
    assert len(result.ids & expected) >= 0.995 * len(expected)
    assert result.calls <= 2 * ideal(config)


def test_the_cap_is_learned_when_not_configured() -> None:
    config = SandboxConfig(sizes={CAT: 6000}, result_cap=1000)
    result = crawl(config, [Query(cat_id=CAT)], reach=None, window=8)
    assert result.caps == [1000]
    assert result.ids == truth(config)
    # The price of not knowing: the first query's pages up to the cap, read again by its
    # walk, and a window of pages past it.
    assert result.calls <= ideal(config) + 1000 // 20 + 8 + 8


def test_a_walk_learning_the_cap_late_goes_on_from_its_pages() -> None:
    config = SandboxConfig(sizes={CAT: 3000}, result_cap=1000)
    result = crawl(config, [Query(cat_id=CAT, sort="price_up")], reach=None, window=8)
    assert result.caps == [1000]
    assert result.ids == truth(config)
    assert result.calls <= ideal(config) + 2 * 8 + 3


def test_max_pages_binding_first_means_no_split() -> None:
    config = SandboxConfig(sizes={CAT: 8000})
    result = crawl(config, [Query(cat_id=CAT)], max_pages=10, window=4)
    assert result.calls == 10
    assert stats_keys.SPLIT_QUERIES not in result.counters
    assert [n.cat_id for n in result.notes] == [CAT]


def test_a_walk_whose_last_reachable_page_is_lost_goes_on_from_its_other_pages() -> None:
    config = SandboxConfig(sizes={CAT: 8000}, totals="capped")
    result = crawl(config, [Query(cat_id=CAT)], window=8, lose=0.05, seed=1)
    expected = truth(config)
    assert result.lost > 0
    # Only the lost pages' products are missing: every walk went on.
    assert len(result.ids & expected) >= len(expected) - 20 * result.lost
    assert stats_keys.SPLIT_UNREACHABLE_UNKNOWN not in result.counters


# State and replay.


def test_memory_per_query_is_bounded_by_the_window_not_the_pages() -> None:
    config = SandboxConfig(sizes={CAT: 50_000}, result_cap=0)
    state = MemoryState()
    seen: list[tuple[int, int]] = []

    class Watching(Frontier):
        async def on_page(self, context: PageContext, summary: PageSummary) -> Decision:
            decision = await super().on_page(context, summary)
            seen.append(state.footprint())
            return decision

    window = 8
    result = crawl(config, [Query(cat_id=CAT)], reach=None, window=window,
                   frontier=Watching(FrontierSettings(window=window), state))
    assert result.calls == ideal(config) == 2500
    assert max(keys for keys, _ in seen) <= 20
    assert max(kept for _, kept in seen) <= 3 * 2 * max(window, 8) * 20
    assert state.footprint()[1] == 0


def test_decisions_depend_only_on_context_summary_and_state() -> None:
    """Replaying the answers a crawl got, in the same order, on a fresh frontier decides the
    same: what issue 11's resume needs to find the pages still to fetch for free."""
    config = SandboxConfig(sizes={CAT: 4500}, totals="capped", short_page_rate=0.03)
    sandbox = Sandbox(config)
    log: list[tuple[dict[str, Any], dict[str, Any], Decision]] = []
    first = frontier(window=5)
    queue = list(run(first.plan([Query(cat_id=CAT)])).follow)
    rng = random.Random(4)
    while queue:
        context = queue.pop(rng.randrange(len(queue)))
        summary, _ = summarise(context, answer(sandbox, context))
        decision = run(first.on_page(context, summary))
        log.append((context.to_dict(), summary.to_dict(), decision))
        queue.extend(decision.follow)
    again = frontier(window=5)
    run(again.plan([Query(cat_id=CAT)]))
    for context, summary, decided in log:
        replayed = run(again.on_page(PageContext.from_dict(context),
                                     PageSummary.from_dict(summary)))
        assert replayed == decided


def test_a_page_context_is_plain_data() -> None:
    context = PageContext(Query(cat_id=5, sort="sales", price_start="9.9", price_end="9.9",
                                new_arrival=False),
                          page=7, last=12, size=20, ahead=100, by_price=False,
                          cell=CellRef("k", 3000), depth=3)
    assert PageContext.from_dict(context.to_dict()) == context
    assert PageContext.from_dict(PageContext(Query(cat_id=5)).to_dict()) == PageContext(
        Query(cat_id=5))
    assert context.sent_query.page_size == 20
