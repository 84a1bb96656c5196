"""The web app in-process (Starlette's httpx test client) over a real twice-crawled catalogue.

What each page shows is checked against MongoDB read directly; hostile query strings must be
refused before any command reaches the server (a pymongo command listener sees every one).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from openpyxl import load_workbook
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)
from starlette.testclient import TestClient

from tests.crawling import PROJECT_ROOT
from tests.web_data import Crawled
from tmapi_crawler.storage.collections import HISTORY, PRODUCTS
from tmapi_crawler.web.app import create_app
from tmapi_crawler.web.tables import PRODUCT_COLUMNS

HOSTILE = [
    "/?$where=sleep(1000)",
    "/?category[$ne]=1",
    "/?category=$where",
    "/?category=1&category=2",
    "/?price_min={\"$gt\":0}",
    "/?price_min=1e400",
    "/?q=(a%2B)%2B$",
    "/?q=.*.*.*.*.*.*.*.*.*(a|aa)*$",
    "/?page=99999999999999999999",
    "/?page=100000",
    "/?page=0",
    "/?per_page=100000",
    "/?sort=$natural",
    "/?new_since={\"$gt\":\"\"}",
    "/api/products?vanished=maybe",
    "/api/products/1e5",
    "/api/products/99999999999999999999999",
    "/movers?days=-1",
    "/movers?category=$where",
    "/crawls?limit=1",
    "/?format=pdf",
]


class Commands(CommandListener):
    """Every command the app's client sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.sent.append(dict(event.command))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def commands() -> Commands:
    return Commands()


@pytest.fixture(scope="module")
def app(crawled_twice: Crawled, commands: Commands) -> Iterator[TestClient]:
    with TestClient(create_app(crawled_twice.uri, crawled_twice.database, [commands])) as client:
        yield client


@pytest.fixture(scope="module")
def db(crawled_twice: Crawled) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(crawled_twice.uri,
                                                                      tz_aware=True)
    yield client[crawled_twice.database]
    client.close()


def test_catalogue_lists_filters_and_pages_what_mongodb_holds(app: TestClient, db: Any) -> None:
    everything = app.get("/api/products", params={"per_page": 200}).json()
    stored = db[PRODUCTS].count_documents({})
    assert everything["total"] == len(everything["products"]) == stored > 150
    sales = [p.get("sales_90d") or 0 for p in everything["products"]]
    assert sales == sorted(sales, reverse=True)

    narrowed = app.get("/api/products", params={"category": 303, "price_max": "20",
                                                "per_page": 200}).json()
    expected = {d["_id"] for d in db[PRODUCTS].find({"categories": 303, "price": {"$lte": 20}})}
    assert {p["_id"] for p in narrowed["products"]} == expected
    assert 0 < narrowed["total"] == len(expected) < everything["total"]

    pages = [app.get("/api/products", params={"sort": "price", "per_page": 30, "page": n})
             .json()["products"] for n in (1, 2)]
    assert len({p["_id"] for p in pages[0] + pages[1]}) == 60
    assert pages[0][-1]["price"] <= pages[1][0]["price"]

    one = db[PRODUCTS].find_one({"categories": 301})
    found = app.get("/api/products", params={"q": str(one["_id"])}).json()["products"]
    assert [p["_id"] for p in found] == [one["_id"]]
    title = one["titles"]["en"][3:12].upper()
    found = app.get("/api/products", params={"q": title, "per_page": 200}).json()["products"]
    assert one["_id"] in {p["_id"] for p in found}
    assert all(title.lower() in " ".join(p["titles"].values()).lower() for p in found)

    html = app.get("/", params={"category": 303, "price_max": "20"})
    assert html.status_code == 200
    assert html.text.count("data-item-id=") == min(len(expected), 50)


def test_new_and_vanished_filters(app: TestClient, db: Any, crawled_twice: Crawled) -> None:
    gone = app.get("/api/products", params={"category": 301, "vanished": "true"}).json()
    assert gone["total"] == 10
    assert all("301" in p["vanished"] for p in gone["products"])
    new = app.get("/api/products", params={"new_since": crawled_twice.second}).json()
    assert new["total"] == db[PRODUCTS].count_documents({"first_crawl_id": crawled_twice.second})
    assert app.get("/api/products", params={"new_since": crawled_twice.first}) \
        .json()["total"] == db[PRODUCTS].count_documents({})


def test_downloads_hold_the_page_rows(app: TestClient) -> None:
    params = {"category": 301, "sort": "-price"}
    shown = app.get("/api/products", params={**params, "per_page": 200}).json()["products"]
    response = app.get("/", params={**params, "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [int(r["item_id"]) for r in rows] == [p["_id"] for p in shown]
    assert [float(r["price"]) for r in rows] == [p["price"] for p in shown]

    book = load_workbook(io.BytesIO(app.get("/", params={**params, "format": "xlsx"}).content))
    sheet = list(book.active.iter_rows(values_only=True))
    assert sheet[0] == PRODUCT_COLUMNS
    assert [r[0] for r in sheet[1:]] == [p["_id"] for p in shown]


def expected_steps(product: dict[str, Any], history: list[dict[str, Any]]) -> list[tuple]:
    """The step line the slow way: replay the history forward from the first sighting."""
    changes = [h for h in history if "price" in h["changes"] or "sale_price" in h["changes"]
               or "sales_90d" in h["changes"]]
    start = {}
    for name in ("price", "sale_price", "sales_90d"):
        first = next((h["changes"][name] for h in changes if name in h["changes"]), None)
        start[name] = first[0] if first else product.get(name)
    points = [(product["first_seen"], start["price"], start["sale_price"], start["sales_90d"])]
    for h in changes:
        prior = dict(zip(("price", "sale_price", "sales_90d"), points[-1][1:], strict=True))
        prior.update({n: v[1] for n, v in h["changes"].items() if n in prior})
        points.append((h["at"], prior["price"], prior["sale_price"], prior["sales_90d"]))
    if product["last_seen"] > points[-1][0]:
        points.append((product["last_seen"], *points[-1][1:]))
    return points


def test_product_page_and_twin(app: TestClient, db: Any, crawled_twice: Crawled) -> None:
    changed = db[HISTORY].find_one({"crawl_id": crawled_twice.second,
                                    "changes.price": {"$ne": None}})
    item_id = changed["item_id"]
    twin = app.get(f"/api/products/{item_id}").json()
    stored = db[PRODUCTS].find_one({"_id": item_id})
    history = list(db[HISTORY].find({"item_id": item_id}).sort("at", 1))
    assert twin["price"] == stored["price"] == changed["changes"]["price"][1]
    assert "price_stats" in twin
    assert [h["changes"] for h in twin["history"]] == [h["changes"] for h in history]
    expected = expected_steps(stored, history)
    assert [(s["at"], s["price"], s["sale_price"], s["sales_90d"]) for s in twin["steps"]] == [
        (at.isoformat(), *rest) for at, *rest in expected]
    assert twin["steps"][0]["price"] == changed["changes"]["price"][0]

    page = app.get(f"/products/{item_id}")
    assert page.status_code == 200
    assert stored["titles"]["zh"] in page.text
    assert "UTC" in page.text
    assert "/static/uplot/uPlot.iife.min.js" in page.text
    assert app.get("/static/uplot/uPlot.iife.min.js").status_code == 200


def test_missing_product_is_a_clear_404(app: TestClient) -> None:
    page = app.get("/products/123")
    assert page.status_code == 404
    assert "No product 123" in page.text
    assert app.get("/api/products/123").json() == {"error": "No product 123 in this database."}
    assert app.get("/no/such/page").status_code == 404


def test_movers_since_the_previous_crawl(app: TestClient, db: Any,
                                         crawled_twice: Crawled) -> None:
    moved = {h["item_id"]: h["changes"]["price"] for h in db[HISTORY].find(
        {"crawl_id": crawled_twice.second, "changes.price": {"$exists": True}})}
    in_301 = {d["_id"] for d in db[PRODUCTS].find({"categories": 301})}
    found = app.get("/api/movers", params={"category": 301, "limit": 200}).json()
    assert found["crawl"] == crawled_twice.second
    drops = {i for i, (old, new) in moved.items() if i in in_301 and new < old}
    rises = {i for i, (old, new) in moved.items() if i in in_301 and new > old}
    assert drops
    assert rises
    assert {m["_id"] for m in found["drops"]} == drops
    assert {m["_id"] for m in found["rises"]} == rises
    pcts = [m["pct"] for m in found["drops"]]
    assert pcts == sorted(pcts)
    first = found["drops"][0]
    old, new = moved[first["_id"]]
    assert first["pct"] == pytest.approx(100 * (new - old) / old)
    assert len(found["vanished"]) == 10
    assert found["new"] == []

    csv_rows = list(csv.DictReader(io.StringIO(app.get(
        "/movers", params={"category": 301, "limit": 200, "kind": "rises", "format": "csv"},
    ).content.decode("utf-8-sig"))))
    assert [int(r["item_id"]) for r in csv_rows] == [m["_id"] for m in found["rises"]]
    assert app.get("/movers", params={"category": 301}).status_code == 200
    recent = app.get("/api/movers", params={"days": 1, "limit": 200}).json()
    assert {m["_id"] for m in recent["drops"]} >= drops


def test_crawls_page(app: TestClient, crawled_twice: Crawled) -> None:
    runs = app.get("/api/crawls").json()["crawls"]
    assert [r["_id"] for r in runs] == [crawled_twice.second, crawled_twice.first]
    assert runs[0]["counts"]["vanished"] == 10
    page = app.get("/crawls")
    assert page.status_code == 200
    assert crawled_twice.first in page.text
    rows = list(csv.DictReader(io.StringIO(app.get("/crawls", params={"format": "csv"})
                                           .content.decode("utf-8-sig"))))
    assert [r["crawl_id"] for r in rows] == [crawled_twice.second, crawled_twice.first]
    assert all(r["calls"] for r in rows)


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_query_strings_are_400_before_mongodb(app: TestClient, commands: Commands,
                                                      path: str) -> None:
    before = len(commands.sent)
    response = app.get(path)
    assert response.status_code == 400, response.text[:300]
    assert commands.sent[before:] == []
    assert not any("$where" in repr(c) for c in commands.sent)


def test_serve_warns_off_localhost_and_never_starts_mongodb(crawled_twice: Crawled,
                                                            tmp_path: Path) -> None:
    command = [sys.executable, "-m", "scrapy", "serve", "--port", "0"]
    absent = subprocess.run([*command, "-s", f"MONGO_EMBEDDED_DIR={tmp_path}"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert absent.returncode == 1
    assert "no crawl has stored anything here yet" in absent.stderr
    assert not any(tmp_path.iterdir())

    process = subprocess.Popen(
        [*command, "--host", "127.0.0.2", "-s", f"MONGO_URI={crawled_twice.uri}",
         "-s", f"MONGO_DATABASE={crawled_twice.database}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "http://127.0.0.2:" in line
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "warning: listening on 127.0.0.2: the app has no login" in errors
