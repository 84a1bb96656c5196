"""The web app in a real browser: headless Debian chromium over ``scrapy serve`` (uvicorn) and
a real sandbox catalogue crawled twice with prices moved.

What the browser shows — the chart's points, a filtered list, a downloaded CSV, status codes —
is checked against MongoDB read directly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser import chromium, missing_browser, served
from tests.test_web import HOSTILE, expected_steps
from tests.web_data import Crawled
from tmapi_crawler.storage.collections import HISTORY, PRODUCTS

WAIT = 30


@pytest.fixture(scope="module")
def url(crawled_twice: Crawled) -> Iterator[str]:
    with served(crawled_twice.uri, crawled_twice.database) as server:
        yield server.url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Chrome]:
    if (why := missing_browser()) is not None:
        pytest.fail(why)
    with chromium(downloads) as driver:
        yield driver


@pytest.fixture(scope="module")
def db(crawled_twice: Crawled) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(crawled_twice.uri,
                                                                      tz_aware=True)
    yield client[crawled_twice.database]
    client.close()


def shown_ids(browser: Chrome) -> list[int]:
    return [int(row.get_attribute("data-item-id"))
            for row in browser.find_elements(By.CSS_SELECTOR, "#products tbody tr")]


def status_of(browser: Chrome, path: str) -> int:
    """The HTTP status the browser gets for ``path`` (fetched by the page's own script)."""
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));", path)


def test_the_chart_has_the_price_history_points(browser: Chrome, url: str, db: Any,
                                                crawled_twice: Crawled) -> None:
    changed = db[HISTORY].find_one({"crawl_id": crawled_twice.second,
                                    "changes.price": {"$ne": None}})
    item_id = changed["item_id"]
    browser.get(f"{url}/products/{item_id}")
    data = WebDriverWait(browser, WAIT).until(
        lambda b: b.execute_script("return window.priceChart && window.priceChart.data"))
    product = db[PRODUCTS].find_one({"_id": item_id})
    expected = expected_steps(product, list(db[HISTORY].find({"item_id": item_id}).sort("at", 1)))
    assert data[0] == [pytest.approx(at.timestamp()) for at, *_ in expected]
    assert data[1] == [price for _, price, _, _ in expected]
    assert data[1][0] == changed["changes"]["price"][0]
    assert data[1][-1] == product["price"]
    assert data[3] == [sales for *_, sales in expected]
    canvas = browser.find_element(By.CSS_SELECTOR, "#chart canvas")
    assert canvas.size["width"] > 300


def test_a_filter_narrows_the_list(browser: Chrome, url: str, db: Any) -> None:
    browser.get(f"{url}/")
    everything = shown_ids(browser)
    assert len(everything) == 50
    Select(browser.find_element(By.NAME, "category")).select_by_value("303")
    browser.find_element(By.NAME, "price_max").send_keys("20")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "category=303" in b.current_url)
    narrowed = shown_ids(browser)
    expected = {d["_id"] for d in db[PRODUCTS].find({"categories": 303, "price": {"$lte": 20}})}
    assert 0 < len(narrowed) < len(everything)
    assert set(narrowed) == expected
    count = browser.find_element(By.ID, "count").text
    assert count.startswith(f"{len(expected)} products")


def test_a_csv_download_equals_the_page_rows(browser: Chrome, url: str,
                                             downloads: Path) -> None:
    browser.get(f"{url}/?category=301&sort=price&per_page=200")
    rows = shown_ids(browser)
    assert len(rows) > 50
    browser.find_element(By.ID, "csv").click()
    target = downloads / "products.csv"
    WebDriverWait(browser, WAIT).until(lambda _: target.exists() and target.stat().st_size > 0)
    body = target.read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")
    downloaded = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert [int(r["item_id"]) for r in downloaded] == rows
    cells = browser.find_elements(By.CSS_SELECTOR, "#products tbody tr td:nth-child(4)")
    assert [r["price"] for r in downloaded] == [c.text for c in cells]


def test_a_missing_product_is_a_clear_404(browser: Chrome, url: str) -> None:
    browser.get(f"{url}/products/123")
    assert browser.find_element(By.ID, "error").text == "No product 123 in this database."
    assert status_of(browser, "/products/123") == 404
    assert status_of(browser, "/api/products/123") == 404


def test_hostile_query_strings_get_a_400(browser: Chrome, url: str) -> None:
    browser.get(f"{url}/")
    assert {path: status_of(browser, path) for path in HOSTILE} == dict.fromkeys(HOSTILE, 400)
    browser.get(f"{url}/?$where=sleep(1000)")
    assert "Bad request" in browser.title
