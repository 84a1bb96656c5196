"""Every price that bounds a query is a whole number of fen, whatever prices the API lists.

The real API sometimes answers a price of 9.995. A walk's edge at such a price is rounded the
safe way (the result at the edge is read twice rather than lost), and the API never gets a
price with three decimals: the sandbox counts every request that had one. The frontier's own
tests cover the decisions; this crawl checks the wiring, over HTTP.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from math import ceil
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.crawling import TOKEN
from tests.inprocess import crawl_in_process
from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.sandbox.process import SandboxProcess

CAT = 801
PRODUCTS = 3000
CAP = 400


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={CAT: PRODUCTS}, result_cap=CAP,
                        three_decimal_share=0.3) as process:
        yield process


def test_the_sandbox_counts_every_request_with_a_three_decimal_price(
        sandbox: SandboxProcess) -> None:
    for price_start in ("9.99", "9.995", "10", "9.9"):
        query = urlencode({api.TOKEN_PARAM: TOKEN, "cat_id": CAT, "price_start": price_start})
        with urllib.request.urlopen(f"{sandbox.api_url}?{query}", timeout=30) as answer:
            assert answer.status == 200
    assert sandbox.stats(records=False)["sub_fen_prices"] == 1


def test_a_walk_over_three_decimal_prices_stores_all_and_sends_whole_fen(
        sandbox: SandboxProcess, tmp_path: Path) -> None:
    result = crawl_in_process(tmp_path, f"cat_id={CAT}", base_url=sandbox.url, feed=True,
                              settings={"TMAPI_RESULT_CAP": CAP, "LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("finish_reason") == "finished"
    got = {item["item_id"] for item in result.items}
    assert got == set(sandbox.truth(cat_id=CAT)["item_ids"])
    assert any(Decimal(str(item["price"])) % api.PRICE_STEP for item in result.items)
    stats = sandbox.stats()
    assert stats["sub_fen_prices"] == 0
    bounds = [Decimal(str(record[name])) for record in stats["records"]
              for name in api.PRICE_FILTERS if name in record]
    assert bounds  # the category was walked
    assert all(price == price.quantize(api.PRICE_STEP) for price in bounds)
    assert result.stat(stats_keys.split_by("walk")) >= PRODUCTS // CAP
    assert stats["pages_served"] <= 1.10 * ceil(PRODUCTS / 20)
