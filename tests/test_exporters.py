"""Feed exports: records a buyer reads, one per product (default) or per sighting.

The extension is driven in-process (``get_crawler``) with pages built from the sandbox's
catalogue, writing real files in every format; one real crawl checks the wiring and the log.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy import Spider
from scrapy.utils.test import get_crawler

from tests.crawling import TOKEN, crawl
from tmapi_crawler import api
from tmapi_crawler.exporters import FeedExporter, ProductRecords, flat
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.sandbox.catalog import Catalog
from tmapi_crawler.sandbox.items import build_item
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.settings import FEED_EXPORTERS

CATALOG = Catalog()
#: Five products of category 7; the first two also turn up under category 8.
SHARED = list(CATALOG.products(7)[:5])
BUYER_COLUMNS = [
    "item_id", "title_en", "title_zh", "price", "sale_price", "origin_price", "moq", "sales_90d",
    "sales_90d_is_lower_bound", "repurchase_rate", "shop_name_en", "shop_name_zh", "shop_years",
    "composite_score", "is_super_factory", "is_powerful_seller", "free_shipping", "ship_in_48h",
    "low_refund_rate", "one_piece_min_order", "product_url", "img", "categories", "sightings",
]


def page(cat_id: int, language: str, raws: list[dict[str, Any]], number: int = 1,
         filters: dict[str, Any] | None = None) -> ProductPage:
    return ProductPage([
        ProductItem.from_raw(raw, QueryContext(cat_id, language, "sales", filters or {},
                                               number, position))
        for position, raw in enumerate(raws)
    ])


def crawl_pages() -> list[ProductPage]:
    """Category 7 in English, then in Chinese with a broken item, then category 8."""
    english = [build_item(p, "en") for p in SHARED]
    chinese = [build_item(p, "zh") for p in SHARED] + [{"title": "no id", "price": "1.00"}]
    return [
        page(7, "en", english),
        page(7, "zh", chinese),
        page(8, "en", english[:2], number=3, filters={"price_start": "1", "free_shipping": True}),
    ]


@pytest.fixture
def feeds(tmp_path: Path) -> dict[str, Path]:
    return {fmt: tmp_path / f"out.{fmt}" for fmt in ("csv", "json", "jsonl", "xml")}


def export(feeds: dict[str, Path], pages: list[ProductPage], **settings: Any) -> None:
    """Run the feed extension over ``pages`` as a crawl would: opened, fed, closed."""
    crawler = get_crawler(Spider, {
        "FEEDS": {str(path): {"format": fmt} for fmt, path in feeds.items()},
        "FEED_EXPORTERS": FEED_EXPORTERS,
        "FEED_EXPORT_ENCODING": "utf-8",
        "TMAPI_FEED_RECORDS": "products",
        **settings,
    })
    spider = Spider("category_items")
    extension = FeedExporter.from_crawler(crawler)

    async def run() -> None:
        extension.open_spider(spider)
        for item in pages:
            extension.item_scraped(item, spider)
        await extension.close_spider(spider)

    asyncio.run(run())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as file:
        return list(csv.DictReader(file))


def test_one_record_per_product_with_titles_per_language(
    feeds: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    export(feeds, crawl_pages())

    records = json.loads(feeds["json"].read_text(encoding="utf-8"))
    assert [r["item_id"] for r in records] == [p.item_id for p in SHARED]
    first = records[0]
    english, chinese = build_item(SHARED[0], "en"), build_item(SHARED[0], "zh")
    assert first["titles"] == {"en": english["title"], "zh": chinese["title"]}
    assert first["shop_names"] == {"en": english["shop_info"]["company_name"],
                                   "zh": chinese["shop_info"]["company_name"]}
    assert first["categories"] == [7, 8]
    assert first["sightings"] == 3
    assert [r["sightings"] for r in records] == [3, 3, 2, 2, 2]
    assert first["price"] == float(english["price"])
    assert first["product_url"] == english["product_url"]
    assert isinstance(first["free_shipping"], bool)
    assert not {"raw", "context", "typed", "rejection"} & set(first)

    lines = feeds["jsonl"].read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records

    stored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stored")]
    assert len(stored) == 4
    assert all("feed (5 items)" in message for message in stored)
    assert "Feed records: 5 products from 12 sightings; 1 rejected items left out" in caplog.text


def test_csv_opens_in_a_spreadsheet_with_chinese_titles_intact(feeds: dict[str, Path]) -> None:
    export(feeds, crawl_pages())
    raw = feeds["csv"].read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "a UTF-8 byte-order mark, for spreadsheets"
    rows = read_csv(feeds["csv"])
    assert list(rows[0]) == BUYER_COLUMNS
    assert len(rows) == len(SHARED)
    chinese = build_item(SHARED[0], "zh")["title"]
    assert rows[0]["title_zh"] == chinese
    assert any("\u4e00" <= char <= "\u9fff" for char in chinese)
    assert rows[0]["categories"] == "7,8"
    assert rows[0]["item_id"] == str(SHARED[0].item_id)
    assert "QueryContext" not in raw.decode("utf-8-sig")


def test_xml_nests_titles_and_leaves_absent_values_out(feeds: dict[str, Path]) -> None:
    export(feeds, crawl_pages())
    items = ET.parse(feeds["xml"]).getroot().findall("item")
    assert len(items) == len(SHARED)
    assert items[0].findtext("titles/zh") == build_item(SHARED[0], "zh")["title"]
    assert "None" not in feeds["xml"].read_text(encoding="utf-8")


def test_one_record_per_sighting_with_its_query_context(feeds: dict[str, Path]) -> None:
    export(feeds, crawl_pages(), TMAPI_FEED_RECORDS="sightings")
    records = [json.loads(line) for line in feeds["jsonl"].read_text().splitlines()]
    assert len(records) == 5 + 5 + 2, "the broken item is left out"
    last = records[-1]
    assert last["context"] == {"cat_id": 8, "language": "en", "sort": "sales", "page": 3,
                               "position": 1,
                               "filters": {"price_start": "1", "free_shipping": True}}
    assert last["title"] == build_item(SHARED[1], "en")["title"]
    assert records[5]["title"] == build_item(SHARED[0], "zh")["title"]

    rows = read_csv(feeds["csv"])
    assert len(rows) == 12
    columns = list(rows[0])
    assert columns[-11:] == ["cat_id", "language", "sort", *(f"filter_{name}" for name in (
        *api.PRICE_FILTERS, *api.FLAG_FILTERS)), "page", "position"]
    assert (rows[-1]["cat_id"], rows[-1]["filter_price_start"], rows[-1]["filter_free_shipping"],
            rows[-1]["filter_price_end"]) == ("8", "1", "True", "")


def test_flat_spells_every_filter_and_joins_lists() -> None:
    assert flat({"a": 1, "context": {"cat_id": 3, "filters": {"free_shipping": False}},
                 "categories": [1, 2]}) == {
        "a": 1, "cat_id": 3, "filter_price_start": None, "filter_price_end": None,
        "filter_new_arrival": None, "filter_support_dropshipping": None,
        "filter_free_shipping": False, "filter_is_super_factory": None, "categories": "1,2",
    }


def test_product_records_live_on_disk_and_go_away() -> None:
    """Deduplication keeps no product in Python: it all goes to the scratch database."""
    records = ProductRecords()
    try:
        for start in range(0, 2000, 20):
            products = CATALOG.products(9)[start:start + 20] if start < 240 else []
            records.add(page(9, "en", [build_item(p, "en") for p in products]).products)
        assert (records.directory / "products.sqlite").stat().st_size > 0
        assert vars(records).keys() == {"directory", "db", "languages", "count"}
        assert sum(1 for _ in records.records()) == 240
    finally:
        records.close()
    assert not records.directory.exists()


# One real crawl.


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"501": 60, "502": 30}, overlap=0.5) as server:
        yield server


def test_a_crawl_exports_each_product_once_and_logs_products(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    result = crawl(tmp_path, "cat_id=501,502", "language=en,zh", base_url=sandbox.url,
                   store=False, feed=True, settings={"TMAPI_FEED_RECORDS": "products"})
    assert result.returncode == 0, result.log[-3000:]
    truth = {i for c in (501, 502) for i in sandbox.truth(cat_id=c)["item_ids"]}
    ids = [record["item_id"] for record in result.items]
    assert sorted(ids) == sorted(truth)
    assert len(truth) < 90, "the categories overlap, so products were seen under both"
    assert f"Stored jsonl feed ({len(truth)} items)" in result.log
    assert all(set(record["titles"]) == {"en", "zh"} for record in result.items)
    assert sum(record["sightings"] for record in result.items) == result.stat("tmapi/items")
