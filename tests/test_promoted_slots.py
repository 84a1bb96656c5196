"""Listings whose pages carry the category's promoted items in fixed slots: the same K items
in the first K places of every page of every listing of the category, sorted and filtered ones
too; ``total_count`` counts the listing and ``has_next_page`` goes on past
``total_count / page_size`` until the listing is exhausted.

Each page brings ``20 - K`` new products, so the ideal is ⌈products / (20 - K)⌉ pages per
listing. For a category split past the result cap, the same: every product read once at
``20 - K`` a page (the walks' edges and page 1 read again by the split are the overhead the
1.15 bound allows). Whole crawls run in-process (``simulated``), and one over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from math import ceil
from pathlib import Path
from typing import Any

import pytest

from tests.crawling import TOKEN
from tests.inprocess import crawl_in_process
from tests.simulated import crawl as simulate
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.catalog import Query as CatalogQuery
from tmapi_crawler.sandbox.config import ListingRequest, SandboxConfig
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.sandbox.server import Sandbox

CAT = 7
PAGE = 20
#: Categories below the cap (the issue's 137 and 420) and one split past it.
SMALL, BELOW_CAP, SPLIT = 137, 420, 1600
#: The sandbox's cap for the split case: 1,600 products are four times it.
CAP = 400


def truth(config: SandboxConfig) -> set[int]:
    return set(Sandbox(config).catalog.truth(CatalogQuery(CAT)).item_ids)


def ideal(products: int, slots: int) -> int:
    """Pages a listing of ``products`` fills at ``PAGE - slots`` new products a page."""
    return ceil(products / (PAGE - slots))


def page(sandbox: Sandbox, number: int, **filters: Any) -> dict[str, Any]:
    query = CatalogQuery.of(CAT, **filters)
    body, _ = sandbox.listing_body(ListingRequest(query, "en", number, PAGE, {}))
    data: dict[str, Any] = json.loads(body)["data"]
    return data


def ids(data: dict[str, Any]) -> list[int]:
    return [item["item_id"] for item in data["items"]]


# The sandbox's switch.


def test_every_page_of_every_listing_starts_with_the_same_promoted_items() -> None:
    slots = 5
    sandbox = Sandbox(SandboxConfig(sizes={CAT: BELOW_CAP}, promoted_slots=slots))
    promoted = ids(page(sandbox, 1))[:slots]
    listings = [{}, {"sort": "price_up"}, {"sort": "sales", "price_start": "1",
                                            "price_end": "20"}]
    for filters in listings:
        pages, number = [], 1
        while True:
            data = page(sandbox, number, **filters)
            if not data["items"]:
                break
            pages.append(data)
            assert ids(data)[:slots] == promoted, (filters, number)  # ads ignore filters
            number += 1
        expected = sandbox.catalog.truth(CatalogQuery.of(CAT, **filters))
        assert all(data["total_count"] == expected.total for data in pages)  # the listing
        listed = [i for data in pages for i in ids(data)[slots:]]
        assert listed == expected.item_ids  # each listing product once, in its order
        assert len(pages) == ideal(expected.total, slots)
        assert [data["has_next_page"] for data in pages] == [True] * (len(pages) - 1) + [False]
    assert len(pages) > 1
    # The default listing runs past the pages its total implies.
    assert ideal(BELOW_CAP, slots) > ceil(BELOW_CAP / PAGE)


def test_the_cap_counts_listing_products_not_slots() -> None:
    slots = 11
    sandbox = Sandbox(SandboxConfig(sizes={CAT: SPLIT}, promoted_slots=slots, result_cap=CAP))
    last = ideal(CAP, slots)
    assert page(sandbox, last)["has_next_page"] is False
    assert len(page(sandbox, last)["items"]) == slots + CAP - (last - 1) * (PAGE - slots)
    assert page(sandbox, last + 1)["items"] == []


# Crawls against the ideal.


@pytest.mark.parametrize("products", [SMALL, BELOW_CAP, SPLIT])
@pytest.mark.parametrize("slots", [2, 5, 11])
def test_promoted_slots_cost_at_most_015_more_than_ideal(slots: int, products: int) -> None:
    cap = CAP if products == SPLIT else 2000
    config = SandboxConfig(sizes={CAT: products}, promoted_slots=slots, result_cap=cap)
    result = simulate(config, [Query(cat_id=CAT)], reach=cap, window=8)
    expected = truth(config)
    assert len(result.ids & expected) >= 0.995 * len(expected)
    assert result.ids <= expected
    assert result.calls <= 1.15 * ideal(len(expected), slots), result.calls
    assert result.counters[stats_keys.QUERIES] == result.counters[stats_keys.QUERIES_DONE]
    assert stats_keys.PAGING_STOPPED not in result.counters
    assert result.losses == []
    if products == SPLIT:
        assert result.counters[stats_keys.split_by("walk")] >= products // cap
        assert stats_keys.SPLIT_PRICE_IGNORED not in result.counters  # the ads are not that
    else:
        assert result.calls == ideal(len(expected), slots)


def test_best_sellers_shown_again_on_some_pages_stop_nothing() -> None:
    """The sandbox's ``--promoted 11``: pages 1 and 6-10 show 11 best sellers first."""
    config = SandboxConfig(sizes={CAT: 300}, promoted=11)
    result = simulate(config, [Query(cat_id=CAT)], window=8)
    assert result.ids == truth(config)
    # Pages 6-10 bring 9 new products of 20: not stale.
    assert stats_keys.PAGING_STALE not in result.counters
    # The listing fills its 300 products and 6 x 11 promoted places.
    assert result.calls == ceil((300 + 6 * 11) / PAGE)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={CAT: BELOW_CAP}, promoted_slots=11) as process:
        yield process


def test_a_crawl_reads_a_listing_with_11_promoted_of_20_whole(
        sandbox: SandboxProcess, tmp_path: Path) -> None:
    assert sandbox.stats(records=False)["config"]["promoted_slots"] == 11  # `--promoted-slots`
    result = crawl_in_process(tmp_path, f"cat_id={CAT}", base_url=sandbox.url, feed=True,
                              settings={"LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    expected = set(sandbox.truth(cat_id=CAT)["item_ids"])
    assert {item["item_id"] for item in result.items} == expected
    billed = sandbox.stats(records=False)["pages_served"]
    assert billed == result.stat(stats_keys.PAGES) == ideal(BELOW_CAP, 11)
