"""The sandbox must behave like the provider's API, or every test built on it proves nothing.

All requests go over real HTTP to a sandbox child process; the in-process `Catalog` built with
the same settings is the independent check that the data are deterministic across processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from tests.crawling import wait_until
from tmapi_crawler import api
from tmapi_crawler.sandbox.__main__ import build_parser
from tmapi_crawler.sandbox.catalog import PRICE_POINT_CENTS, Catalog, Query
from tmapi_crawler.sandbox.config import SandboxConfig, token_fingerprint
from tmapi_crawler.sandbox.items import format_price, sales_value
from tmapi_crawler.sandbox.process import SandboxProcess

TOKEN = "sandbox-test-token-8c1f"
OTHER_TOKEN = "sandbox-other-token-77ab"
SEED = 7
SIZES = {1001: 500, 1002: 500, 1003: 3000}
REFERENCE_ITEM_KEYS = [
    "item_id", "product_url", "title", "img", "category_path", "price", "price_info", "currency",
    "moq", "quantity_begin", "sale_info", "delivery_info", "shop_info", "item_repurchase_rate",
    "low_refund_rate", "ship_in_48h", "one_piece_min_order",
]
DATA_KEYS = ["page", "page_size", "total_count", "keyword", "sort", "cat_id", "filters", "items",
             "has_next_page"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN, OTHER_TOKEN], size=SIZES, seed=SEED) as process:
        yield process


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(seed=SEED, sizes=SIZES)


def query_string(params: dict[str, Any]) -> str:
    return urllib.parse.urlencode({
        name: api.format_bool(value) if isinstance(value, bool) else value
        for name, value in params.items()
    })


def call(sandbox: SandboxProcess, token: str | None = TOKEN, **params: Any) -> tuple[int, bytes]:
    """One API request; returns HTTP status and raw body whatever the status."""
    if token is not None:
        params = {api.TOKEN_PARAM: token, **params}
    try:
        with NO_PROXY.open(f"{sandbox.api_url}?{query_string(params)}", timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def page(sandbox: SandboxProcess, **params: Any) -> dict[str, Any]:
    status, body = call(sandbox, **params)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["code"] == 200
    data: dict[str, Any] = answer["data"]
    return data


def crawl(sandbox: SandboxProcess, **params: Any) -> list[dict[str, Any]]:
    """Every reachable item of a query, following has_next_page."""
    items: list[dict[str, Any]] = []
    number = 1
    while True:
        data = page(sandbox, page=number, page_size=100, **params)
        items += data["items"]
        if not data["has_next_page"]:
            return items
        number += 1


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["item_id"] for item in items]


@pytest.mark.parametrize(("params", "invalid"), [
    ({}, "cat_id"),
    ({"cat_id": ""}, "cat_id"),
    ({"cat_id": "abc"}, "cat_id"),
    ({"cat_id": "-5"}, "cat_id"),
    ({"cat_id": 1001, "language": "fr"}, "language"),
    ({"cat_id": 1001, "sort": "popular"}, "sort"),
    ({"cat_id": 1001, "page": 0}, "page"),
    ({"cat_id": 1001, "page": "two"}, "page"),
    ({"cat_id": 1001, "page_size": 0}, "page_size"),
    ({"cat_id": 1001, "page_size": 101}, "page_size"),
    ({"cat_id": 1001, "price_start": "abc"}, "price_start"),
    ({"cat_id": 1001, "price_end": "-1"}, "price_end"),
    ({"cat_id": 1001, "new_arrival": "yes"}, "new_arrival"),
    ({"cat_id": 1001, "free_shipping": "True"}, "free_shipping"),
    ({"cat_id": 1001, "is_super_factory": "1"}, "is_super_factory"),
])
def test_invalid_parameters_get_422(sandbox: SandboxProcess, params: dict[str, Any],
                                    invalid: str) -> None:
    status, body = call(sandbox, **params)
    assert status == 422
    assert json.loads(body) == {"code": 422, "msg": f"Parameter error: {invalid}", "data": None}


def test_optional_parameters_have_the_documented_defaults(sandbox: SandboxProcess) -> None:
    data = page(sandbox, cat_id=1001)
    assert (data["page"], data["page_size"], data["sort"]) == (1, api.DEFAULT_PAGE_SIZE,
                                                               api.DEFAULT_SORT)
    assert len(data["items"]) == api.DEFAULT_PAGE_SIZE


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_missing_or_wrong_token_gets_401(sandbox: SandboxProcess, token: str | None) -> None:
    status, body = call(sandbox, token=token, cat_id=1001)
    assert status == 401
    answer = json.loads(body)
    assert (answer["code"], answer["data"]) == (401, None)
    assert "not-the-token" not in answer["msg"]


def test_any_token_is_accepted_when_none_is_configured() -> None:
    with SandboxProcess(size={1001: 10}) as sandbox:
        assert call(sandbox, token="whatever", cat_id=1001)[0] == 200
        assert call(sandbox, token="", cat_id=1001)[0] == 401
    assert sandbox.returncode == 0  # SIGTERM is a clean exit


def test_answer_has_the_reference_shape(sandbox: SandboxProcess) -> None:
    answer = json.loads(call(sandbox, cat_id=1001, page_size=100)[1])
    assert list(answer) == ["code", "msg", "data"]
    assert answer["msg"] == "success"
    data = answer["data"]
    assert list(data) == DATA_KEYS
    assert (data["keyword"], data["cat_id"], data["filters"]) == ("", 1001, {})
    full = [item for item in data["items"] if list(item) == REFERENCE_ITEM_KEYS]
    assert full, "some items carry every optional block"
    item = full[0]
    assert re.fullmatch(r"[1-9][0-9]{11}", str(item["item_id"]))
    assert item["product_url"] == f"https://detail.1688.com/offer/{item['item_id']}.html"
    assert re.fullmatch(r"[0-9]+\.[0-9]{2}", item["price"])
    assert item["price_info"]["price"] == item["price"]
    assert item["currency"] == "CNY"
    assert list(item["shop_info"]) == ["company_name", "is_powerful_seller", "is_super_factory",
                                       "shop_years", "score_info"]
    assert list(item["delivery_info"]) == ["area_from", "free_shipping", "ship_in_48h"]
    assert all(isinstance(i["moq"], str) for i in data["items"])
    assert any(list(i) != REFERENCE_ITEM_KEYS for i in data["items"]), "some blocks are missing"


def test_pagination_walks_the_whole_category_once(sandbox: SandboxProcess,
                                                  catalog: Catalog) -> None:
    pages = [page(sandbox, cat_id=1001, page=n, page_size=100) for n in range(1, 7)]
    assert [p["total_count"] for p in pages] == [500] * 6
    assert [len(p["items"]) for p in pages] == [100] * 5 + [0]
    assert [p["has_next_page"] for p in pages] == [True] * 4 + [False, False]
    crawled = [i for p in pages for i in ids(p["items"])]
    assert crawled == sandbox.truth(cat_id=1001)["item_ids"]
    assert crawled == [p.item_id for p in catalog.products(1001, 0)]


def test_results_past_the_cap_are_unreachable(sandbox: SandboxProcess) -> None:
    last = page(sandbox, cat_id=1003, page=20, page_size=100)
    assert (len(last["items"]), last["has_next_page"]) == (100, False)
    beyond = page(sandbox, cat_id=1003, page=21, page_size=100)
    assert (beyond["items"], beyond["has_next_page"], beyond["total_count"]) == ([], False, 3000)
    assert len(crawl(sandbox, cat_id=1003)) == 2000

    sandbox.configure(result_cap=250)
    partial = page(sandbox, cat_id=1003, page=3, page_size=100)
    assert (len(partial["items"]), partial["has_next_page"]) == (50, False)
    sandbox.configure(result_cap=0)
    assert len(crawl(sandbox, cat_id=1003)) == 3000


@pytest.mark.parametrize("filters", [
    {"price_start": "5", "price_end": "50.5"},
    {"price_end": "0.99"},
    {"new_arrival": True},
    {"support_dropshipping": False},
    {"free_shipping": True},
    {"is_super_factory": True, "price_start": "1"},
])
def test_filters_select_exactly_the_matching_products(sandbox: SandboxProcess, catalog: Catalog,
                                                      filters: dict[str, Any]) -> None:
    items = crawl(sandbox, cat_id=1003, **filters)
    expected = catalog.matching_ids(1003, **filters)
    assert set(ids(items)) == expected
    assert 0 < len(expected) < 3000
    assert len(items) == len(expected)
    first = page(sandbox, cat_id=1003, **filters)
    assert first["filters"] == filters
    assert first["total_count"] == len(expected)
    low, high = price_bounds(filters)
    for item in items:
        assert low <= float(item["price"]) <= high
        if "free_shipping" in filters and "delivery_info" in item:
            assert item["delivery_info"]["free_shipping"] is filters["free_shipping"]
        if "is_super_factory" in filters:
            assert item["shop_info"]["is_super_factory"] is filters["is_super_factory"]
    products = {p.item_id: p for p in catalog.products(1003, 0)}
    for name in ("new_arrival", "support_dropshipping"):
        if name in filters:
            assert all(getattr(products[i], name) is filters[name] for i in ids(items))


def price_bounds(filters: dict[str, Any]) -> tuple[float, float]:
    return float(filters.get("price_start", 0)), float(filters.get("price_end", "inf"))


@pytest.mark.parametrize("sort", api.SORTS)
def test_sorts_order_the_results(sandbox: SandboxProcess, catalog: Catalog, sort: str) -> None:
    sandbox.configure(result_cap=0)
    items = crawl(sandbox, cat_id=1003, sort=sort)
    assert len(set(ids(items))) == len(items) == 3000
    prices = [float(item["price"]) for item in items]
    if sort == "default":
        assert ids(items) == [p.item_id for p in catalog.products(1003, 0)]
    elif sort == "price_up":
        assert prices == sorted(prices)
    elif sort == "price_down":
        assert prices == sorted(prices, reverse=True)
    else:
        sales = [sales_value(i["sale_info"]["sale_quantity_90days"])
                 for i in items if "sale_info" in i]
        assert sales == sorted(sales, reverse=True)
    assert ids(items) == sandbox.truth(cat_id=1003, sort=sort)["item_ids"]


SCRIPTS = {
    "en": r"^[\x20-\x7e]+$",
    "zh": r"[\u4e00-\u9fff]",
    "ru": r"[\u0400-\u04ff]",
    "vi": r"[\u00c0-\u1ef9]",
    "ja": r"[\u3040-\u30ff\u4e00-\u9fff]",
    "ko": r"[\uac00-\ud7af]",
}


def test_languages_change_only_the_text(sandbox: SandboxProcess) -> None:
    by_language = {lang: page(sandbox, cat_id=1001, language=lang, page_size=50)["items"]
                   for lang in api.LANGUAGES}
    english = by_language["en"]
    for language, items in by_language.items():
        assert ids(items) == ids(english)
        assert all(re.search(SCRIPTS[language], item["title"]) for item in items), language
        assert all(re.search(SCRIPTS[language], item["shop_info"]["company_name"])
                   for item in items), language
        assert [strip_text(i) for i in items] == [strip_text(i) for i in english]
    for position in range(len(english)):
        titles = {by_language[lang][position]["title"] for lang in api.LANGUAGES}
        assert len(titles) == len(api.LANGUAGES)


def strip_text(item: dict[str, Any]) -> dict[str, Any]:
    """The item without its language-dependent text."""
    item = json.loads(json.dumps(item))
    del item["title"], item["shop_info"]["company_name"]
    item.get("delivery_info", {}).pop("area_from", None)
    return item


def test_neighbouring_categories_share_products(sandbox: SandboxProcess) -> None:
    first, second = crawl(sandbox, cat_id=1001), crawl(sandbox, cat_id=1002)
    shared = set(ids(first)) & set(ids(second))
    assert 0.05 * 500 < len(shared) < 0.2 * 500
    by_id = {item["item_id"]: item for item in first}
    assert all(by_id[item["item_id"]] == item for item in second if item["item_id"] in shared)
    # Sharing chains along positions, so c and c+2 share only what passed through c+1 (~1 %).
    assert len(set(ids(first)) & set(ids(crawl(sandbox, cat_id=1003)))) < 0.05 * 500


async def _concurrently(url: str, tokens: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """One request per token in the list, all at once."""
    async with aiohttp.ClientSession() as session:
        async def one(number: int, token: str) -> tuple[int, dict[str, Any]]:
            params = {api.TOKEN_PARAM: token, "cat_id": "1001", "page": str(number)}
            async with session.get(url, params=params) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(n, t) for n, t in enumerate(tokens, start=1)))


def test_concurrency_limit_refuses_and_counts_every_arrival(sandbox: SandboxProcess) -> None:
    # Admitted requests sleep 1 s, so all five arrive while the first two are in flight.
    sandbox.configure(concurrency_limit=2, latency=1.0)
    answers = asyncio.run(_concurrently(sandbox.api_url, [TOKEN] * 5))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 503, 503, 503]
    assert all(body["code"] == status for status, body in answers)
    stats = sandbox.stats()
    assert stats["throttled"] == 3
    assert stats["answers"] == {"200": 2, "503": 3}
    # Two in flight plus each refused arrival, which leaves again before the next one.
    assert stats["peak_in_flight"] == 3
    assert stats["peak_in_flight_by_token"] == {token_fingerprint(TOKEN): 3}
    assert stats["in_flight"] == 0


def test_concurrency_limit_is_per_token(sandbox: SandboxProcess) -> None:
    sandbox.configure(concurrency_limit=1, latency=0.5)
    answers = asyncio.run(_concurrently(sandbox.api_url, [TOKEN, OTHER_TOKEN]))
    assert [status for status, _ in answers] == [200, 200]
    stats = sandbox.stats()
    assert (stats["peak_in_flight"], stats["peak_in_flight_total"]) == (1, 2)
    assert stats["peak_in_flight_by_token"] == {token_fingerprint(TOKEN): 1,
                                                token_fingerprint(OTHER_TOKEN): 1}


def test_sequential_requests_are_never_concurrent(sandbox: SandboxProcess) -> None:
    for number in range(1, 6):
        page(sandbox, cat_id=1001, page=number)
    assert sandbox.stats()["peak_in_flight"] == 1


def test_faults_as_http_status(sandbox: SandboxProcess) -> None:
    sandbox.configure(fault_rates={417: 1.0}, fault_mode="status")
    status, body = call(sandbox, cat_id=1001)
    assert status == 417
    assert json.loads(body) == {"code": 417, "msg": api.ERROR_CODES[417].meaning, "data": None}


def test_faults_in_the_body(sandbox: SandboxProcess) -> None:
    sandbox.configure(fault_rates={499: 1.0}, fault_mode="body")
    status, body = call(sandbox, cat_id=1001)
    assert status == 200
    assert json.loads(body)["code"] == 499
    assert json.loads(body)["data"] is None


def test_mixed_faults_use_both_forms_and_are_replayable(sandbox: SandboxProcess) -> None:
    sandbox.configure(fault_rates={500: 0.5, 503: 0.25})
    first = [call(sandbox, cat_id=1001, page=n) for n in range(1, 41)]
    sandbox.reset()
    assert [call(sandbox, cat_id=1001, page=n) for n in range(1, 41)] == first
    codes = [(status, json.loads(body)["code"]) for status, body in first]
    assert {(500, 500), (200, 500), (503, 503), (200, 503), (200, 200)} <= set(codes)
    stats = sandbox.stats()
    assert stats["answers"]["500"] + stats["answers"]["503"] + stats["pages_served"] == 40
    assert stats["throttled"] == 0


def test_garbage_and_missing_data(sandbox: SandboxProcess) -> None:
    sandbox.configure(garbage_rate=1.0)
    status, body = call(sandbox, cat_id=1001)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    sandbox.configure(garbage_rate=0.0, missing_data_rate=1.0)
    status, body = call(sandbox, cat_id=1001)
    assert (status, json.loads(body)) == (200, {"code": 200, "msg": "success"})
    stats = sandbox.stats()
    assert (stats["garbage"], stats["missing_data"], stats["pages_served"]) == (1, 1, 0)
    assert [r["ok"] for r in stats["records"]] == [False, False]


def test_quota_then_439_until_reset(sandbox: SandboxProcess) -> None:
    sandbox.configure(quota=3)
    statuses = [call(sandbox, cat_id=1001, page=n)[0] for n in range(1, 6)]
    assert statuses == [200, 200, 200, 439, 439]
    assert json.loads(call(sandbox, cat_id=1001)[1])["code"] == 439
    assert sandbox.stats()["quota_remaining"] == 0
    sandbox.reset()
    assert call(sandbox, cat_id=1001)[0] == 200


def test_price_epoch_moves_a_fifth_of_the_prices(sandbox: SandboxProcess,
                                                 catalog: Catalog) -> None:
    sandbox.configure(result_cap=0)
    before = {item["item_id"]: item for item in crawl(sandbox, cat_id=1003)}
    sandbox.configure(price_epoch=1)
    after = {item["item_id"]: item for item in crawl(sandbox, cat_id=1003)}
    assert before.keys() == after.keys()
    moved = {i for i in before if before[i]["price"] != after[i]["price"]}
    assert 0.15 < len(moved) / len(before) < 0.25
    assert moved == catalog.changed_ids(1003, 0, 1)
    for item_id, old in before.items():
        new = after[item_id]
        for field in ("title", "img", "shop_info", "moq"):
            assert old[field] == new[field]


def test_a_category_resized_at_runtime_loses_or_gains_products_at_its_end(
    sandbox: SandboxProcess, catalog: Catalog
) -> None:
    before = ids(crawl(sandbox, cat_id=1001))
    try:
        config = sandbox.configure(sizes={"1001": 450})
        assert config["sizes"] == {"1001": 450, "1002": 500, "1003": 3000}
        assert ids(crawl(sandbox, cat_id=1001)) == before[:450]
        assert sandbox.truth(cat_id=1001)["item_ids"] == before[:450]
        assert ids(crawl(sandbox, cat_id=1003)) == catalog.truth(Query.of(1003)).item_ids[:2000]
        with pytest.raises(urllib.error.HTTPError) as error:
            sandbox.configure(sizes={"1001": -1})
        assert error.value.code == 400
        assert sandbox.configure()["sizes"]["1001"] == 450
    finally:
        sandbox.configure(sizes={"1001": 500})
    assert ids(crawl(sandbox, cat_id=1001)) == before


def test_truth_matches_an_independent_catalogue(sandbox: SandboxProcess,
                                                catalog: Catalog) -> None:
    truth = sandbox.truth(cat_id=1003, sort="price_down", free_shipping=True)
    expected = catalog.truth(Query.of(1003, "price_down", free_shipping=True))
    assert truth["item_ids"] == expected.item_ids
    assert truth["total"] == expected.total == len(truth["item_ids"])
    assert sandbox.truth(cat_id=1003)["total"] == 3000  # the cap does not apply
    with pytest.raises(urllib.error.HTTPError) as error:
        sandbox.truth(cat_id="x")
    assert error.value.code == 422


def test_records_and_counters(sandbox: SandboxProcess) -> None:
    page(sandbox, cat_id=1001, page=2, page_size=10, sort="sales", free_shipping=False)
    call(sandbox, cat_id=1001, page="x")
    stats = sandbox.stats()
    assert stats["requests"] == 2
    assert stats["pages_served"] == 1
    assert stats["items_served"] == 10
    # When each call came in and (answered after the latency) went out, on the clock the
    # first request's time is on: what a benchmark's timeline of calls in flight is made of.
    served, refused = stats["records"]
    assert stats["first_request_at"] == served.pop("received_at") < refused.pop("received_at")
    assert served.pop("answered_at") >= stats["first_request_at"]
    assert "answered_at" not in refused
    assert stats["records"] == [
        {"cat_id": 1001, "language": "en", "sort": "sales", "page": 2, "page_size": 10,
         "free_shipping": False, "code": 200, "ok": True},
        {"invalid": "page", "code": 422, "ok": False},
    ]
    assert "records" not in sandbox.stats(records=False)


def test_the_token_never_appears_in_stats(sandbox: SandboxProcess) -> None:
    page(sandbox, cat_id=1001)
    call(sandbox, token="wrong-token-secret", cat_id=1001)
    with NO_PROXY.open(f"{sandbox.url}/_sandbox/stats", timeout=30) as response:
        text = response.read().decode()
    for secret in (TOKEN, OTHER_TOKEN, "wrong-token-secret"):
        assert secret not in text
    assert token_fingerprint(TOKEN) in text


def test_malformed_items() -> None:
    with SandboxProcess(size={1001: 400}, malformed_rate=0.2, seed=SEED) as sandbox:
        items = crawl(sandbox, cat_id=1001, language="zh")
        truth = sandbox.truth(cat_id=1001)
    missing = [item for item in items if "item_id" not in item]
    bad = [item for item in items if item["price"] == "abc"]
    assert missing
    assert bad
    assert len(missing) == truth["missing_item_id"]
    assert ids(bad) == truth["malformed_item_ids"]
    assert [i["item_id"] for i in items if "item_id" in i] == truth["item_ids"]


def test_catalogue_is_deterministic_and_fast_enough_to_build() -> None:
    big = Catalog(seed=SEED, sizes={5: 50_000})
    products = big.products(5, 0)
    assert len({p.item_id for p in products}) == 50_000
    again = Catalog(seed=SEED, sizes={5: 50_000})
    by_sales = Query.of(5, "sales", price_end="100")
    assert again.results(by_sales) == big.results(by_sales)
    assert again.query(4, "ru", "price_up") == big.query(4, "ru", "price_up")
    assert Catalog(seed=SEED + 1).products(5, 0)[0] != Catalog(seed=SEED).products(5, 0)[0]


def test_a_share_of_the_products_at_one_price() -> None:
    plain = Catalog(seed=SEED, sizes={9: 2000})
    pointed = Catalog(seed=SEED, sizes={9: 2000}, price_point_share=0.5)
    at_point = {p.item_id for p in pointed.products(9, 0) if p.price_cents == PRICE_POINT_CENTS}
    assert 0.45 * 2000 < len(at_point) < 0.55 * 2000
    for before, after in zip(plain.products(9, 0), pointed.products(9, 0), strict=True):
        assert before.item_id == after.item_id
        assert after.price_cents in (before.price_cents, PRICE_POINT_CENTS)
    point = format_price(PRICE_POINT_CENTS)
    assert pointed.matching_ids(9, price_start=point, price_end=point) == at_point
    with pytest.raises(ValueError, match="price_point_share"):
        Catalog(price_point_share=1.5)


def test_busy_window_spans_first_request_to_last_answer(sandbox: SandboxProcess) -> None:
    assert sandbox.stats(records=False)["busy_seconds"] is None
    sandbox.configure(latency=0.05)
    call(sandbox, cat_id=1001)
    call(sandbox, cat_id=1001, page=2)
    # Two answers of 50 ms each, one after the other: the window holds both latencies.
    assert sandbox.stats(records=False)["busy_seconds"] >= 0.1
    sandbox.reset()
    assert sandbox.stats(records=False)["busy_seconds"] is None


# How the real API answers: each behaviour a switch, and the truth still what a complete
# crawl must find.


def test_capped_totals_say_at_most_the_cap(sandbox: SandboxProcess) -> None:
    sandbox.configure(totals="capped")
    assert page(sandbox, cat_id=1003)["total_count"] == 2000
    assert page(sandbox, cat_id=1001)["total_count"] == 500
    assert sandbox.truth(cat_id=1003)["total"] == 3000
    sandbox.configure(totals="true")
    assert page(sandbox, cat_id=1003)["total_count"] == 3000


def test_short_pages_leave_out_products_no_listing_serves(sandbox: SandboxProcess) -> None:
    sandbox.configure(short_page_rate=0.05)
    pages = [page(sandbox, cat_id=1001, page=n, page_size=20) for n in range(1, 26)]
    sizes = [len(p["items"]) for p in pages]
    assert any(size < 20 for size in sizes[:-1])  # short pages in the middle
    assert all(p["has_next_page"] for p in pages[:-1])
    assert all(p["total_count"] == 500 for p in pages)
    served = [i for p in pages for i in ids(p["items"])]
    truth = sandbox.truth(cat_id=1001)
    assert served == truth["item_ids"]
    assert 400 < len(served) < 500
    # The same products are missing from every listing they belong to.
    by_price = crawl(sandbox, cat_id=1001, sort="price_up")
    assert set(ids(by_price)) == set(served)


def test_promoted_items_come_first_again_on_later_pages(sandbox: SandboxProcess) -> None:
    sandbox.configure(promoted=3)
    pages = [page(sandbox, cat_id=1001, page=n, page_size=20) for n in range(1, 30)]
    promoted = ids(pages[0]["items"])[:3]
    for number in (1, 6, 7, 8, 9, 10):
        assert ids(pages[number - 1]["items"])[:3] == promoted
    assert ids(pages[1]["items"])[:3] != promoted
    served = [i for p in pages for i in ids(p["items"])]
    assert set(served) == set(sandbox.truth(cat_id=1001)["item_ids"])
    assert len(served) == 500 + 3 * 6  # each promoted slot pushes the listing on
    last = max(n for n, p in enumerate(pages, 1) if p["items"])
    assert last == 26 > 500 // 20
    assert pages[24]["has_next_page"]
    assert not pages[25]["has_next_page"]
    sorted_page = page(sandbox, cat_id=1001, sort="price_up")
    assert ids(sorted_page["items"])[:3] != promoted  # only the default listing promotes


def test_ids_and_totals_as_strings(sandbox: SandboxProcess) -> None:
    sandbox.configure(string_values=True)
    data = page(sandbox, cat_id=1001)
    assert data["total_count"] == "500"
    assert all(isinstance(item["item_id"], str) for item in data["items"])
    assert [int(i) for i in ids(data["items"])] == sandbox.truth(cat_id=1001)["item_ids"][:20]


def test_page_sizes_above_the_limit_are_served_clamped(sandbox: SandboxProcess) -> None:
    sandbox.configure(page_size_limit=20)
    first = page(sandbox, cat_id=1001, page=1, page_size=50)
    second = page(sandbox, cat_id=1001, page=2, page_size=500)
    assert (first["page_size"], len(first["items"])) == (20, 20)
    assert (second["page_size"], len(second["items"])) == (20, 20)
    truth = sandbox.truth(cat_id=1001)["item_ids"]
    assert ids(first["items"]) + ids(second["items"]) == truth[:40]
    assert page(sandbox, cat_id=1001, page_size=10)["page_size"] == 10


@pytest.mark.parametrize("claimed", ["1e12", str(2**63), "-5", '"many"'])
def test_an_absurd_total(sandbox: SandboxProcess, claimed: str) -> None:
    sandbox.configure(claimed_total=claimed)
    data = page(sandbox, cat_id=1001, page=5, page_size=100)
    assert data["total_count"] == json.loads(claimed)
    assert (len(data["items"]), data["has_next_page"]) == (100, False)
    assert page(sandbox, cat_id=1001, page=6, page_size=100)["items"] == []


def test_the_last_page_forever(sandbox: SandboxProcess) -> None:
    sandbox.configure(repeat_last_page=True)
    last = page(sandbox, cat_id=1001, page=5, page_size=100)
    assert last["has_next_page"]
    for number in (6, 7, 40):
        again = page(sandbox, cat_id=1001, page=number, page_size=100)
        assert ids(again["items"]) == ids(last["items"])
        assert again["has_next_page"]
    assert len(sandbox.truth(cat_id=1001)["item_ids"]) == 500


def test_an_ignored_price_filter(sandbox: SandboxProcess) -> None:
    sandbox.configure(ignore_price_filter=True)
    data = page(sandbox, cat_id=1001, price_start="5", price_end="6")
    assert data["filters"] == {"price_start": "5", "price_end": "6"}
    assert data["total_count"] == 500
    assert sandbox.truth(cat_id=1001, price_start="5", price_end="6")["total"] == 500


def test_a_stalled_api_answers_once_it_resumes(sandbox: SandboxProcess) -> None:
    sandbox.configure(stalled=True)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(page, sandbox, cat_id=1001)
        wait_until(lambda: sandbox.stats(records=False)["pages_served"] == 1,
                   "the stalled call reached the sandbox")
        # The sandbox answered its stats, but not the call before them.
        assert not answer.done()
        sandbox.configure(stalled=False)
        assert len(answer.result(timeout=30)["items"]) == 20


def test_an_api_stalling_after_some_pages_holds_that_page_and_the_next(
    sandbox: SandboxProcess,
) -> None:
    sandbox.configure(stall_after=2)
    assert len(page(sandbox, cat_id=1001)["items"]) == 20  # the first answers come
    with ThreadPoolExecutor(2) as pool:
        second = pool.submit(page, sandbox, cat_id=1001, page=2)
        wait_until(lambda: sandbox.stats(records=False)["pages_served"] == 2,
                   "the second call reached the sandbox")
        third = pool.submit(page, sandbox, cat_id=1001, page=3)
        wait_until(lambda: sandbox.stats(records=False)["pages_served"] == 3,
                   "the third call reached the sandbox")
        assert not second.done()
        assert not third.done()
        sandbox.configure(stall_after=0)
        assert [len(f.result(timeout=30)["items"]) for f in (second, third)] == [20, 20]


@pytest.mark.parametrize(("bad", "message"), [
    ({"totals": "approximate"}, "totals must be one of"),
    ({"short_page_rate": 2.0}, "short_page_rate must be a fraction"),
    ({"promoted": -1}, "promoted and page_size_limit"),
    ({"claimed_total": "lots"}, "claimed_total must be a JSON value"),
])
def test_bad_switches_are_refused(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxConfig(**bad)


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {"totals", "short_page_rate", "promoted", "string_values", "page_size_limit",
            "claimed_total", "repeat_last_page", "ignore_price_filter"} <= {
        a.dest for a in options}
    assert all(a.help for a in options)
    assert parser.format_help().count("(default:") == len(options)
    shown = subprocess.run([sys.executable, "-m", "tmapi_crawler.sandbox", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert shown == parser.format_help()
