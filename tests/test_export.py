"""``scrapy export``: what MongoDB holds, in every format, read back and compared.

The database is written by the crawler's own store (two crawls with moved prices, a category
the second saw whole without some products), with no sandbox and no token: an export never
calls the API. Each format is read back with its own reader (``csv``, ``json``, openpyxl) and
compared with the documents, field by field.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pymongo
import pytest

from tests.conftest import PROJECT_ROOT
from tests.servers import MongodProcess
from tmapi_crawler import export
from tmapi_crawler.commands.export import write
from tmapi_crawler.crawl import new_crawl_id
from tmapi_crawler.exporters import (
    FLAG_FIELDS,
    LINK_FIELDS,
    PRICE_FIELDS,
    SHOP_FIELDS,
    XlsxExporter,
    flat,
)
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.items import build_item
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.documents import batch_now, updates_by_id
from tmapi_crawler.storage.history import AVAILABLE_IN
from tmapi_crawler.storage.store import ProductStore

CATALOG = Catalog(sizes={7: 40, 9: 30}, overlap=0.0)
FORMATS = (".csv", ".json", ".jsonl", ".xlsx")
#: The products of category 9 the second crawl no longer found: they vanish from it.
GONE = 10
#: ``price_stats`` as the price-statistics issue stores it (a part of it).
AS_OF = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
STATS = {"d30": {"min": 1.5, "max": 3.0, "avg": 2.25}, "vs_min": 1.25, "as_of": AS_OF,
         "last_change": {"at": AS_OF, "from": 2.0, "to": 1.5, "pct": -25.0}}


def sightings(cat_id: int, epoch: int, language: str = "en") -> list[ProductItem]:
    return [ProductItem.from_raw(build_item(product, language),
                                 QueryContext(cat_id, language, "default", {}, 1, position))
            for position, product in enumerate(CATALOG.products(cat_id, epoch))]


@pytest.fixture(scope="module")
def database(mongod: MongodProcess) -> Iterator[tuple[Any, dict[str, datetime]]]:
    """Two crawls written by the store: the first saw 7 (en, zh) and 9; the second saw 7 with
    moved prices and 9 without its last products, and marked those vanished. Some products carry
    ``price_stats``, as the price-statistics issue adds it."""
    name = "t_export"
    starts: dict[str, datetime] = {}

    async def crawl(crawl_id: str, batches: list[list[ProductItem]],
                    whole: list[int]) -> None:
        store = ProductStore(mongod.uri, name, retry_timeout=10)
        await store.open()
        try:
            starts[crawl_id] = batch_now()
            await store.db[CRAWL_RUNS].insert_one({"_id": crawl_id,
                                                   "started_at": starts[crawl_id]})
            for batch in batches:
                now = batch_now()
                await store.write_products(updates_by_id(batch, crawl_id, now), crawl_id, now)
            if whole:
                await store.mark_vanished(crawl_id, whole, batch_now())
        finally:
            await store.close()

    first, second = new_crawl_id(), new_crawl_id()
    asyncio.run(crawl(first, [sightings(7, 0), sightings(7, 0, "zh"), sightings(9, 0)], []))
    asyncio.run(crawl(second, [sightings(7, 1), sightings(9, 0)[:-GONE]], [9]))
    client: pymongo.MongoClient = pymongo.MongoClient(mongod.uri, tz_aware=True)
    db = client[name]
    # The writer keeps ``price_stats`` on every product; here five carry a known part of it.
    db[PRODUCTS].update_many({}, {"$unset": {"price_stats": "", "price_steps": ""}})
    some = [d["_id"] for d in db[PRODUCTS].find({}, {"_id": 1}).sort("_id", 1).limit(5)]
    db[PRODUCTS].update_many({"_id": {"$in": some[:3]}}, {"$set": {"price_stats": STATS}})
    # A price that never changed has no last change.
    db[PRODUCTS].update_many({"_id": {"$in": some[3:]}},
                             {"$set": {"price_stats": {**STATS, "last_change": None}}})
    try:
        yield db, [starts[first], starts[second]], [first, second]
    finally:
        client.drop_database(name)
        client.close()


# What the database says each format must hold.


def product_columns(document: dict[str, Any], languages: tuple[str, ...]) -> dict[str, Any]:
    """A stored product as the export's plain columns, built from the document directly."""
    titles, shops = document.get("titles", {}), document.get("company_names", {})
    stats = document.get("price_stats", {})
    return {
        "item_id": document["_id"],
        **{f"title_{lang}": titles.get(lang) for lang in languages},
        **{name: document.get(name) for name in PRICE_FIELDS},
        **{f"shop_name_{lang}": shops.get(lang) for lang in languages},
        **{name: document.get(name) for name in (*SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS)},
        "categories": ",".join(map(str, sorted(document["categories"]))),
        "first_seen": document["first_seen"],
        "last_seen": document["last_seen"],
        "vanished": ",".join(sorted(document.get("vanished") or {}, key=int)),
        "price_stats_as_of": stats.get("as_of"),
        **{f"price_stats_d30_{name}": stats.get("d30", {}).get(name)
           for name in ("avg", "max", "min")},
        **{f"price_stats_last_change_{name}": (stats.get("last_change") or {}).get(name)
           for name in ("at", "from", "pct", "to")},
        "price_stats_vs_min": stats.get("vs_min"),
    }


def change_columns(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for field, (old, new) in document["changes"].items():
        pct = (round((new - old) / old * 100, 2)
               if field != AVAILABLE_IN and old and new is not None else None)
        yield {"item_id": document["item_id"], "crawl_id": document["crawl_id"],
               "at": document["at"], "field": field,
               "old": ",".join(map(str, old)) if isinstance(old, list) else old,
               "new": ",".join(map(str, new)) if isinstance(new, list) else new,
               "change_pct": pct}


def as_text(value: Any) -> str:
    """A value as CSV writes it."""
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def as_json(value: Any) -> Any:
    """A value as JSON holds it (bson's Int64 is a plain int there)."""
    return json.loads(json.dumps(value.isoformat() if isinstance(value, datetime) else value))


def read_back(path: Path) -> list[dict[str, Any]]:
    """The file's rows as plain columns, with its own reader."""
    if path.suffix == ".csv":
        raw = path.read_bytes()
        if not raw:
            return []  # no rows, no columns to name
        assert raw.startswith(b"\xef\xbb\xbf"), "CSV starts with a UTF-8 byte-order mark"
        with path.open(encoding="utf-8-sig", newline="") as file:
            return list(csv.DictReader(file))
    if path.suffix == ".json":
        return [flat(record) for record in json.loads(path.read_text(encoding="utf-8"))]
    if path.suffix == ".jsonl":
        return [flat(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
    workbook = openpyxl.load_workbook(path, read_only=True)
    rows = list(workbook.active.iter_rows(values_only=True))
    workbook.close()
    if not rows:
        return []
    header, *body = rows
    # A streamed sheet does not record its size: the reader ends a row at its last value.
    return [dict(zip(header, row + (None,) * (len(header) - len(row)), strict=True))
            for row in body]


def same(expected: dict[str, Any], got: dict[str, Any], fmt: str) -> None:
    """One row as the format holds it: CSV text, JSON values, XLSX cells (UTC times)."""
    assert list(got) == list(expected)
    for name, value in expected.items():
        if fmt == ".csv":
            assert got[name] == as_text(value), name
        elif fmt == ".xlsx" and isinstance(value, datetime):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            assert abs(got[name] - naive) < timedelta(milliseconds=1), name
        elif fmt == ".xlsx" and value == "":
            assert got[name] is None, name
        elif fmt == ".xlsx":
            assert got[name] == value, name  # Excel keeps numbers, not their Python type
        else:
            assert got[name] == as_json(value), name
            assert type(got[name]) is type(as_json(value)), name


def export_to(db: Any, tmp_path: Path, what: str, fmt: str, **arguments: str) -> list[Any]:
    path = tmp_path / f"{what}{fmt}"
    count = write(db, what, export.parse_filters(arguments, what), path)
    rows = read_back(path)
    assert len(rows) == count
    return rows


@pytest.mark.parametrize("fmt", FORMATS)
def test_products_export_equals_what_mongodb_holds(database, tmp_path: Path, fmt: str) -> None:
    db, _, _ = database
    documents = list(db[PRODUCTS].find().sort("_id", 1))
    assert len(documents) == 70
    rows = export_to(db, tmp_path, "products", fmt)
    assert [row["item_id"] for row in rows] == [
        as_text(d["_id"]) if fmt == ".csv" else d["_id"] for d in documents]
    for document, row in zip(documents, rows, strict=True):
        same(product_columns(document, ("en", "zh")), row, fmt)
    vanished = [row for row in rows if row["vanished"] not in ("", None)]
    assert len(vanished) == GONE
    assert {row["vanished"] for row in vanished} == {"9"}
    assert sum(row["price_stats_vs_min"] not in ("", None) for row in rows) == 5
    assert sum(row["price_stats_last_change_pct"] not in ("", None) for row in rows) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_changes_export_has_a_row_per_product_crawl_and_field(
    database, tmp_path: Path, fmt: str
) -> None:
    db, _, _ = database
    documents = list(db[HISTORY].find().sort([("at", 1), ("_id", 1)]))
    expected = [row for d in documents for row in change_columns(d)]
    fields = {row["field"] for row in expected}
    assert {"price", AVAILABLE_IN} <= fields
    assert sum(row["field"] == AVAILABLE_IN for row in expected) == GONE
    rows = export_to(db, tmp_path, "changes", fmt)
    assert len(rows) == len(expected)

    def key(row: dict[str, Any]) -> tuple[str, str]:
        return str(row["item_id"]), row["field"]

    for want, got in zip(sorted(expected, key=key), sorted(rows, key=key), strict=True):
        same(want, got, fmt)
    drops = [row for row in expected if row["field"] == "price"
             and row["change_pct"] is not None and row["change_pct"] < 0]
    assert drops, "the second crawl lowered some prices"


def test_filters_narrow_products_and_changes(database, tmp_path: Path) -> None:
    db, starts, crawls = database

    def ids(rows: list[dict[str, Any]]) -> set[int]:
        return {row["item_id"] for row in rows}

    in_9 = {d["_id"] for d in db[PRODUCTS].find({"categories": 9})}
    assert ids(export_to(db, tmp_path, "products", ".jsonl", cat_id="9")) == in_9
    both = ids(export_to(db, tmp_path, "products", ".jsonl", cat_id="7,9"))
    assert both == {d["_id"] for d in db[PRODUCTS].find()}

    seen_by_second = {d["_id"] for d in db[PRODUCTS].find({"last_crawl_id": crawls[1]})}
    assert ids(export_to(db, tmp_path, "products", ".jsonl", since=crawls[1])) == seen_by_second
    assert len(seen_by_second) == 70 - GONE
    as_date = starts[1].isoformat()
    assert ids(export_to(db, tmp_path, "products", ".jsonl", since=as_date)) == seen_by_second
    assert export_to(db, tmp_path, "products", ".jsonl", since="2999-01-01") == []

    gone = {d["_id"] for d in db[PRODUCTS].find({"vanished.9": {"$exists": True}})}
    assert ids(export_to(db, tmp_path, "products", ".jsonl", vanished="true")) == gone
    assert ids(export_to(db, tmp_path, "products", ".jsonl", vanished="false")) == \
        {d["_id"] for d in db[PRODUCTS].find()} - gone

    changed = set(db[HISTORY].distinct("item_id"))
    moved = set(db[HISTORY].distinct("item_id", {"changes.price": {"$exists": True}}))
    assert moved
    assert moved < changed
    assert ids(export_to(db, tmp_path, "products", ".jsonl", changed="true")) == changed
    assert ids(export_to(db, tmp_path, "products", ".jsonl", changed="true", cat_id="7")) == \
        changed - in_9
    assert ids(export_to(db, tmp_path, "products", ".jsonl", changed="false")) == \
        {d["_id"] for d in db[PRODUCTS].find()} - changed
    assert export_to(db, tmp_path, "products", ".jsonl", changed="true",
                     since="2999-01-01") == []

    left = export_to(db, tmp_path, "changes", ".jsonl", vanished="true")
    assert {(row["item_id"], row["field"]) for row in left} == {(i, AVAILABLE_IN) for i in gone}
    kept = export_to(db, tmp_path, "changes", ".jsonl", vanished="false")
    assert len(kept) + len(left) == len(export_to(db, tmp_path, "changes", ".jsonl"))
    assert all(row["field"] != AVAILABLE_IN for row in kept)
    assert ids(export_to(db, tmp_path, "products", ".jsonl", vanished="true", cat_id="9")) == \
        gone
    assert export_to(db, tmp_path, "products", ".jsonl", vanished="true", cat_id="7") == []
    in_7 = export_to(db, tmp_path, "changes", ".jsonl", cat_id="7")
    assert {row["item_id"] for row in in_7} == changed - in_9
    assert all(row["field"] != AVAILABLE_IN for row in in_7)
    assert len(export_to(db, tmp_path, "changes", ".jsonl", since=crawls[1])) == \
        len(export_to(db, tmp_path, "changes", ".jsonl"))
    assert export_to(db, tmp_path, "changes", ".jsonl", since="2999-01-01") == []


def scrapy_export(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``scrapy export`` as a user runs it, without a token."""
    environment = {k: v for k, v in os.environ.items() if k != "TMAPI_TOKEN"}
    return subprocess.run([sys.executable, "-m", "scrapy", "export", *arguments],
                          cwd=PROJECT_ROOT, env={**environment, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("arguments", "says"), [
    (("products",), "-O FILE"),
    (("everything", "-O", "x.csv"), "products or changes"),
    (("products", "-O", "x.xml"), "extension"),
    (("products", "-O", "x.csv", "-a", "cat_id=shoes"), "cat_id"),
    (("products", "-O", "x.csv", "-a", "changed=maybe"), "changed"),
    (("products", "-O", "x.csv", "-a", "colour=red"), "colour"),
    (("changes", "-O", "x.csv", "-a", "changed=true"), "changed"),
    (("products", "-O", "x.csv", "-a", "since=last tuesday"), "since"),
    (("changes", "-O", "x.csv", "-a", "since=20200101T000000Z-abcdef"), "no crawl"),
])
def test_bad_arguments_exit_2_with_one_line(
    database, mongod: MongodProcess, tmp_path: Path, arguments: tuple[str, ...], says: str
) -> None:
    done = scrapy_export(*arguments, MONGO_URI=mongod.uri, MONGO_DATABASE="t_export")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert says in lines[0]
    assert not (PROJECT_ROOT / "x.csv").exists()


def test_the_command_exports_without_token_or_api(
    database, mongod: MongodProcess, tmp_path: Path
) -> None:
    db, _, _ = database
    out = tmp_path / "products.xlsx"
    done = scrapy_export("products", "-O", str(out), "-a", "cat_id=9",
                         MONGO_URI=mongod.uri, MONGO_DATABASE="t_export",
                         TMAPI_BASE_URL="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"Exported 30 products to {out}"
    rows = read_back(out)
    assert [row["item_id"] for row in rows] == sorted(db[PRODUCTS].distinct(
        "_id", {"categories": 9}))
    assert not list(tmp_path.glob(".*.partial"))


def test_xlsx_rows_beyond_a_sheet_go_on_in_the_next_with_the_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    with path.open("wb") as file:
        exporter = XlsxExporter(file)
        exporter.max_rows = 3  # Excel's is 1,048,576
        exporter.start_exporting()
        for n in range(5):
            exporter.export_item({"n": n, "titles": {"en": f"t{n}\x07"}})
        exporter.finish_exporting()
    workbook = openpyxl.load_workbook(path, read_only=True)
    sheets = {sheet.title: list(sheet.iter_rows(values_only=True))
              for sheet in workbook.worksheets}
    workbook.close()
    assert sheets == {
        "export": [("n", "title_en"), (0, "t0"), (1, "t1")],
        "export 2": [("n", "title_en"), (2, "t2"), (3, "t3")],
        "export 3": [("n", "title_en"), (4, "t4")],
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_export_is_a_readable_empty_file(database, tmp_path: Path, fmt: str) -> None:
    db, _, _ = database
    assert export_to(db, tmp_path, "products", fmt, since="2999-01-01") == []
