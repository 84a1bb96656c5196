"""Feed exports a buyer can open: one flat record per product, or per sighting.

The spider yields one ``ProductPage`` per API page (``items.py``); ``-O products.csv`` (or
``.json``, ``.jsonl``, ``.xml``) gets, instead of pages or Python reprs, records with the fields
a buyer reads: ``item_id``, titles, prices, MOQ, 90-day sales, the shop, the flags, the
product's link and image, and where it was seen.

``TMAPI_FEED_RECORDS`` chooses the records:

* ``products`` (default): one record per product, as the database keeps it. A product shows up
  under many queries (languages, sorts, categories, price slices); its record has its titles and
  shop names in every language crawled, the categories it was found in, how many times it was
  seen, and the values of its last sighting. Deduplicating a crawl of millions of products must
  not hold them in memory: sightings go to a scratch SQLite file in the system's temporary
  folder (``TMPDIR``; about 0.5 kB per product), read back in first-seen order when the crawl
  closes, then deleted.
* ``sightings``: one record per product per page it appeared on, written as the crawl goes,
  with that query's context (category, language, sort, filters, page, position).

JSON and XML nest naturally (``titles.en``, ``context.filters``); CSV flattens the same records
into plain columns (``title_en``, ``cat_id``, ``filter_price_start``) and starts with a UTF-8
byte-order mark, so a spreadsheet opens Chinese titles intact (``item_export_kwargs``
``{"bom": false}`` leaves it out). Items that could not be normalised are left out of feeds
(storage keeps them in ``rejected_items``) and counted in the feed's closing log line; Scrapy's
own ``Stored ... feed (N items)`` line counts records, i.e. products or sightings.
"""

from __future__ import annotations

import asyncio
import codecs
import datetime
import json
import logging
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from itertools import groupby
from pathlib import Path
from typing import Any, Final

from scrapy import Spider, exporters
from scrapy.extensions import feedexport

from tmapi_crawler import api
from tmapi_crawler.items import ProductItem, ProductPage
from tmapi_crawler.normalize import translated_fields
from tmapi_crawler.scalars import MalformedItem

logger = logging.getLogger(__name__)

PRODUCTS: Final = "products"
SIGHTINGS: Final = "sightings"

#: The typed values a buyer reads, in column order, around the translated names.
PRICE_FIELDS: Final = ("price", "sale_price", "origin_price", "moq", "sales_90d",
                       "sales_90d_is_lower_bound", "repurchase_rate")
SHOP_FIELDS: Final = ("shop_years", "composite_score", "is_super_factory", "is_powerful_seller")
FLAG_FIELDS: Final = ("free_shipping", "ship_in_48h", "low_refund_rate", "one_piece_min_order")
LINK_FIELDS: Final = ("product_url", "img")
#: Column prefixes of nested values in CSV; the filters are spelled out in full, so every
#: record has the same columns whatever filters its query set.
_FLAT_PREFIX: Final = {"titles": "title_", "shop_names": "shop_name_", "context": "",
                       "filters": "filter_"}
_FLAT_KEYS: Final = {"filters": (*api.PRICE_FILTERS, *api.FLAG_FILTERS)}
#: Values ``flat`` keeps as they are, told by their exact type.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
#: Records replayed between two yields to the event loop when the crawl closes.
_REPLAY_CHUNK: Final = 10_000


def _names(product: ProductItem) -> dict[str, Any]:
    try:
        return translated_fields(product.raw)
    except MalformedItem:
        return {}


def _values(typed: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: typed.get(name) for name in names}


def sighting_record(product: ProductItem) -> dict[str, Any]:
    """One sighting: the product as this page showed it, and the query that found it."""
    typed, names, context = product.typed or {}, _names(product), product.context
    return {
        "item_id": product.item_id,
        "title": names.get("title"),
        **_values(typed, PRICE_FIELDS),
        "shop_name": names.get("company_name"),
        **_values(typed, SHOP_FIELDS),
        **_values(typed, FLAG_FIELDS),
        **_values(typed, LINK_FIELDS),
        "context": {
            "cat_id": context.cat_id,
            "language": context.language,
            "sort": context.sort,
            "filters": dict(context.filters),
            "page": context.page,
            "position": context.position,
        },
    }


class ProductRecords:
    """Sightings folded into one record per product, on disk: memory stays flat however many
    products a crawl finds."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tmapi-feed-"))
        self.db = sqlite3.connect(self.directory / "products.sqlite", isolation_level=None)
        # A scratch file: no journal, no fsync; a crash loses nothing the database lacks.
        self.db.executescript("""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -16000;
            CREATE TABLE products (seq INTEGER PRIMARY KEY, item_id INTEGER UNIQUE NOT NULL,
                                   fields TEXT NOT NULL, sightings INTEGER NOT NULL);
            CREATE TABLE names (item_id INTEGER, language TEXT, title TEXT, shop_name TEXT,
                                PRIMARY KEY (item_id, language)) WITHOUT ROWID;
            CREATE TABLE categories (item_id INTEGER, cat_id INTEGER,
                                     PRIMARY KEY (item_id, cat_id)) WITHOUT ROWID;
            BEGIN;
        """)
        self.languages: dict[str, None] = {}
        self.count = 0

    def add(self, products: list[ProductItem]) -> None:
        """Fold one page's normalised products in; the last sighting's values win."""
        rows, names, categories = [], [], []
        for product in products:
            typed = product.typed or {}
            fields = {**_values(typed, PRICE_FIELDS), **_values(typed, SHOP_FIELDS),
                      **_values(typed, FLAG_FIELDS), **_values(typed, LINK_FIELDS)}
            rows.append((product.item_id, json.dumps(fields, ensure_ascii=False)))
            translated = _names(product)
            language = product.context.language
            self.languages.setdefault(language)
            names.append((product.item_id, language, translated.get("title"),
                          translated.get("company_name")))
            categories.append((product.item_id, product.context.cat_id))
        self.db.executemany(
            "INSERT INTO products (item_id, fields, sightings) VALUES (?, ?, 1) "
            "ON CONFLICT (item_id) DO UPDATE SET fields = excluded.fields, "
            "sightings = sightings + 1", rows)
        self.db.executemany(
            "INSERT INTO names VALUES (?, ?, ?, ?) ON CONFLICT (item_id, language) DO UPDATE "
            "SET title = coalesce(excluded.title, title), "
            "shop_name = coalesce(excluded.shop_name, shop_name)", names)
        self.db.executemany("INSERT OR IGNORE INTO categories VALUES (?, ?)", categories)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every product once, in the order it was first seen; every language crawled is a key
        of its titles (None where this product was not seen in it), so CSV columns agree."""
        languages = sorted(self.languages, key=api.LANGUAGES.index)
        rows = self.db.execute(
            "SELECT p.seq, p.item_id, p.fields, p.sightings, n.language, n.title, n.shop_name, "
            "(SELECT group_concat(cat_id) FROM categories c WHERE c.item_id = p.item_id) "
            "FROM products p LEFT JOIN names n ON n.item_id = p.item_id ORDER BY p.seq")
        for _seq, group in groupby(rows, key=lambda row: row[0]):
            first, *rest = group
            _, item_id, fields, sightings, *_names_cols, cat_ids = first
            titles = dict.fromkeys(languages)
            shop_names = dict.fromkeys(languages)
            for row in (first, *rest):
                language, title, shop_name = row[4:7]
                if language is not None:
                    titles[language], shop_names[language] = title, shop_name
            values = json.loads(fields)
            yield {
                "item_id": item_id,
                "titles": titles,
                **{name: values[name] for name in PRICE_FIELDS},
                "shop_names": shop_names,
                **{name: values[name] for name in (*SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS)},
                "categories": sorted(int(c) for c in cat_ids.split(",")),
                "sightings": sightings,
            }
            self.count += 1

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class FeedExporter(feedexport.FeedExporter):
    """Scrapy's feed exporter, fed product records instead of pages (``TMAPI_FEED_RECORDS``).

    Records go through Scrapy's own ``item_scraped``, so feed slots, batches, storages and the
    item count of its log line all count records.
    """

    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.records_of = crawler.settings.get("TMAPI_FEED_RECORDS")
        self.products = ProductRecords() if self.records_of == PRODUCTS else None
        self.sightings = 0
        self.rejected = 0

    def item_scraped(self, item: Any, spider: Spider) -> None:
        if not isinstance(item, ProductPage):
            super().item_scraped(item, spider)
            return
        valid = [product for product in item.products if product.typed is not None]
        self.rejected += len(item.products) - len(valid)
        self.sightings += len(valid)
        if self.products is not None:
            self.products.add(valid)
            return
        for product in valid:
            super().item_scraped(sighting_record(product), spider)

    async def close_spider(self, spider: Spider) -> None:
        if self.products is not None:
            try:
                for count, record in enumerate(self.products.records(), 1):
                    super().item_scraped(record, spider)
                    if count % _REPLAY_CHUNK == 0:
                        await asyncio.sleep(0)
            finally:
                self.products.close()
            what = f"{self.products.count} products from {self.sightings} sightings"
        else:
            what = f"{self.sightings} sightings"
        logger.info("Feed records: %s%s", what,
                    f"; {self.rejected} rejected items left out (see rejected_items and the "
                    "log)" if self.rejected else "")
        await super().close_spider(spider)


def flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """A nested record as plain columns: dicts become prefixed columns, lists one cell."""
    columns: dict[str, Any] = {}
    for key, value in record.items():
        if type(value) in _SCALARS:  # most values: no ABC check (a million rows an export)
            columns[key] = value
        elif isinstance(value, Mapping):
            prefix = _FLAT_PREFIX.get(key, f"{key}_")
            keys = _FLAT_KEYS.get(key, tuple(value))
            nested = flat({k: value.get(k) for k in keys})
            columns.update({f"{prefix}{k}": v for k, v in nested.items()})
        elif isinstance(value, list | tuple):
            columns[key] = ",".join(map(str, value))
        else:
            columns[key] = value
    return columns


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


class CsvExporter(exporters.CsvItemExporter):
    """Plain columns, and a byte-order mark so spreadsheets read the file as UTF-8.

    A record (a dict) is flat text and numbers once ``flat`` has run: after Scrapy's exporter
    wrote the header from the first one, the others go straight to its CSV writer, column by
    column, as Scrapy would write them. Per field, Scrapy's path (an item adapter, a
    serializer, a join, a decode) cost two thirds of a million-product export (B10).
    """

    def __init__(self, file: Any, *, bom: bool = True, **kwargs: Any) -> None:
        encoding = kwargs.get("encoding") or "utf-8"
        if bom and codecs.lookup(encoding).name == "utf-8":
            kwargs["encoding"] = "utf-8-sig"
        super().__init__(file, **kwargs)
        self._columns: list[str] | None = None
        self._known: set[str] = set()

    def export_item(self, item: Any) -> None:
        if not isinstance(item, dict):
            super().export_item(item)
            return
        row = flat(item)
        if self._columns is None or (self._autodetected_fields and not self._data_loss_warned
                                     and not row.keys() <= self._known):
            super().export_item(row)  # the header, or Scrapy's warning about lost columns
            fields = self.fields_to_export or ()
            self._columns = list(fields.keys() if isinstance(fields, Mapping) else fields)
            self._known = set(self._columns)
            return
        self.csv_writer.writerow([row.get(name, "") for name in self._columns])


class XmlExporter(exporters.XmlItemExporter):
    """Absent values are absent elements, not the text "None"."""

    def export_item(self, item: Any) -> None:
        super().export_item(_without_none(item) if isinstance(item, Mapping) else item)


class XlsxExporter(exporters.BaseItemExporter):
    """The CSV exporter's columns in an Excel workbook, streamed.

    openpyxl's write-only mode writes each row out as it comes (strings inline, no shared
    table), so memory stays flat however many rows; the file is assembled when the export
    finishes. Times are written as Excel times, in UTC (Excel has no time zones). A sheet
    holds at most ``max_rows`` rows, its header included: the rows go on in a next sheet
    (``export 2``, …), with the header again.
    """

    max_rows = 1_048_576

    def __init__(self, file: Any, *, sheet: str = "export", **kwargs: Any) -> None:
        super().__init__(dont_fail=True, **kwargs)
        from openpyxl import Workbook  # noqa: PLC0415 - a crawl's feed never needs it

        self.file = file
        self.workbook = Workbook(write_only=True)
        self.sheet_name = sheet
        self.sheet: Any = None
        self.rows = 0
        self.columns: list[str] | None = (
            None if self.fields_to_export is None else list(self.fields_to_export))

    def export_item(self, item: Any) -> None:
        row = flat(item)
        if self.columns is None:
            self.columns = list(row)
        if self.sheet is None or self.rows == self.max_rows:
            self._next_sheet()
        self.sheet.append([_cell(row.get(column)) for column in self.columns])
        self.rows += 1

    def _next_sheet(self) -> None:
        number = len(self.workbook.worksheets) + 1
        self.sheet = self.workbook.create_sheet(
            self.sheet_name if number == 1 else f"{self.sheet_name} {number}")
        self.rows = 0
        if self.columns:
            self.sheet.append(self.columns)
            self.rows = 1

    def finish_exporting(self) -> None:
        if self.sheet is None:
            self._next_sheet()  # an empty export is still a workbook
        self.workbook.save(self.file)


#: Characters an XLSX file cannot hold (XML 1.0 forbids them).
_NOT_IN_XML: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _cell(value: Any) -> Any:
    """A value Excel can hold: naive UTC times, text without control characters."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    if isinstance(value, str):
        return _NOT_IN_XML.sub("", value)
    return value


JsonExporter = exporters.JsonItemExporter
JsonLinesExporter = exporters.JsonLinesItemExporter
