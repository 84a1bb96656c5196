"""Reading the catalogue: one set of validated queries for the web app, the exports and alerts.

Every parameter arrives as text from a user (a query string, a command line) and is parsed
here into typed values before any MongoDB document is built: a ``$where`` or ``{"$gt": ""}``
can only ever be a string compared with a field, never an operator, and searches are escaped
literals (no user regular expression reaches the server). Sorts come from a whitelist, each
backed by an index (``storage.indexes.PRODUCT_INDEXES``), and pages stop at :data:`MAX_OFFSET`.
A wrong parameter raises :class:`QueryError`, which the web app answers with a 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from tmapi_crawler.api import LANGUAGES
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS

#: Boolean product fields a list can be filtered on (``free_shipping=true``).
FLAGS: Final = ("free_shipping", "ship_in_48h", "is_super_factory", "is_powerful_seller",
                "low_refund_rate", "one_piece_min_order")
#: Sort names → MongoDB sort; ``_id`` last so pages never overlap, in the direction of the
#: index that gives the order (``storage.indexes.PRODUCT_INDEXES``).
SORTS: Final[Mapping[str, list[tuple[str, int]]]] = {
    "sales": [("sales_90d", DESCENDING), ("_id", ASCENDING)],
    "price": [("price", ASCENDING), ("_id", ASCENDING)],
    "-price": [("price", DESCENDING), ("_id", DESCENDING)],
    "change": [("price_stats.last_change.pct", ASCENDING), ("_id", ASCENDING)],
    "-change": [("price_stats.last_change.pct", DESCENDING), ("_id", ASCENDING)],
    "first_seen": [("first_seen", DESCENDING), ("_id", DESCENDING)],
}
DEFAULT_SORT: Final = "sales"
PER_PAGE: Final = 50
MAX_PER_PAGE: Final = 200
#: The deepest a list pages (skip): beyond it, narrow the filters instead.
MAX_OFFSET: Final = 10_000
#: Counts stop here ("more than 10,000"): an exact count of a million costs a scan.
COUNT_LIMIT: Final = 10_000
MAX_SEARCH: Final = 100
MAX_PRICE: Final = 1e9
#: ``scrapy crawl``'s crawl ids (``crawl.new_crawl_id``).
CRAWL_ID: Final = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{1,32}")
ITEM_ID: Final = re.compile(r"\d{1,19}")
_CAT_ID: Final = re.compile(r"\d{1,12}")
_BOOLS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
#: Where a search looks, besides ``_id``: every crawled language's title and shop name.
SEARCHED: Final = (*(f"titles.{lang}" for lang in LANGUAGES),
                   *(f"company_names.{lang}" for lang in LANGUAGES))


class QueryError(ValueError):
    """A parameter the queries do not accept (the web app's 400)."""


def _one(params: Mapping[str, Any], name: str) -> str | None:
    """A parameter as one short string, or None when absent or empty."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryError(f"{name}: expected text")
    value = value.strip()
    if len(value) > 200:
        raise QueryError(f"{name}: too long")
    return value or None


def parse_int(params: Mapping[str, Any], name: str, pattern: re.Pattern[str] = _CAT_ID,
              *, low: int = 0, high: int = 2**63 - 1) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    if not pattern.fullmatch(value) or not low <= int(value) <= high:
        raise QueryError(f"{name}: expected a whole number from {low} to {high}")
    return int(value)


def parse_price(params: Mapping[str, Any], name: str) -> float | None:
    value = _one(params, name)
    if value is None:
        return None
    if not re.fullmatch(r"\d{1,10}(\.\d{1,4})?", value) or float(value) > MAX_PRICE:
        raise QueryError(f"{name}: expected a price in CNY, like 12.5")
    return float(value)


def parse_bool(params: Mapping[str, Any], name: str) -> bool | None:
    value = _one(params, name)
    if value is None:
        return None
    if value.lower() not in _BOOLS:
        raise QueryError(f"{name}: expected true or false")
    return _BOOLS[value.lower()]


def parse_crawl_id(params: Mapping[str, Any], name: str) -> str | None:
    value = _one(params, name)
    if value is not None and not CRAWL_ID.fullmatch(value):
        raise QueryError(f"{name}: expected a crawl id like 20261126T214501Z-3fa2c1")
    return value


def parse_choice(params: Mapping[str, Any], name: str, choices: tuple[str, ...] | Mapping[str, Any],
                 default: str) -> str:
    value = _one(params, name) or default
    if value not in choices:
        raise QueryError(f"{name}: expected one of {', '.join(choices)}")
    return value


@dataclass(frozen=True, slots=True)
class ProductQuery:
    """A validated catalogue list: what to show, in which order, which page."""

    category: int | None = None
    price_min: float | None = None
    price_max: float | None = None
    flags: Mapping[str, bool] = field(default_factory=dict)
    #: Products first seen by this crawl or a later one.
    new_since: str | None = None
    #: True: only products gone from a category (``category`` if given, any otherwise).
    vanished: bool | None = None
    search: str | None = None
    #: Products in any of these categories (``scrapy export -a cat_id=1,2``).
    categories: tuple[int, ...] = ()
    #: Products last seen at this time or later.
    seen_since: datetime | None = None
    sort: str = DEFAULT_SORT
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, paged: bool = True) -> ProductQuery:
        """Parse untrusted parameters (``q``, ``category``, ``price_min``, ``price_max``, each
        flag, ``new_since``, ``vanished``, ``sort``, ``page``, ``per_page``)."""
        unknown = set(params) - {"q", "category", "price_min", "price_max", "new_since",
                                 "vanished", "sort", "page", "per_page", "format", *FLAGS}
        if unknown:
            raise QueryError(f"unknown parameter: {sorted(unknown)[0][:40]}")
        search = _one(params, "q")
        if search is not None and len(search) > MAX_SEARCH:
            raise QueryError(f"q: at most {MAX_SEARCH} characters")
        flags = {name: value for name in FLAGS
                 if (value := parse_bool(params, name)) is not None}
        query = cls(
            category=parse_int(params, "category"),
            price_min=parse_price(params, "price_min"),
            price_max=parse_price(params, "price_max"),
            flags=flags,
            new_since=parse_crawl_id(params, "new_since"),
            vanished=parse_bool(params, "vanished"),
            search=search,
            sort=parse_choice(params, "sort", SORTS, DEFAULT_SORT),
            page=(parse_int(params, "page", low=1, high=MAX_OFFSET) or 1) if paged else 1,
            per_page=(parse_int(params, "per_page", low=1, high=MAX_PER_PAGE) or PER_PAGE)
            if paged else PER_PAGE,
        )
        if query.offset >= MAX_OFFSET:
            raise QueryError(f"page: lists stop at {MAX_OFFSET:,} rows; narrow the filters")
        return query

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def product_filter(query: ProductQuery) -> dict[str, Any]:
    """The MongoDB filter of a catalogue list (only typed values from ``query``)."""
    conditions: dict[str, Any] = {}
    if query.category is not None:
        conditions["categories"] = query.category
    elif query.categories:
        conditions["categories"] = {"$in": list(query.categories)}
    if query.seen_since is not None:
        conditions["last_seen"] = {"$gte": query.seen_since}
    price: dict[str, float] = {}
    if query.price_min is not None:
        price["$gte"] = query.price_min
    if query.price_max is not None:
        price["$lte"] = query.price_max
    if price:
        conditions["price"] = price
    conditions.update(query.flags)
    if query.new_since is not None:
        # Crawl ids sort by start time.
        conditions["first_crawl_id"] = {"$gte": query.new_since}
    if query.vanished is not None:
        if query.category is not None:
            conditions[f"vanished.{query.category}"] = {"$exists": query.vanished}
        else:
            # A mark removed on return leaves ``vanished: {}``.
            conditions["vanished"] = ({"$exists": True, "$nin": [{}, None]} if query.vanished
                                      else {"$in": [{}, None]})
    if query.search is not None:
        conditions.update(search_filter(query.search))
    return conditions


def search_filter(text: str) -> dict[str, Any]:
    """An ``item_id`` (digits), or a literal, case-insensitive part of a title or shop name.

    The part is escaped, never a pattern of the user's: no regular-expression bomb reaches the
    server. A substring match cannot use an index (Chinese titles get no word splitting in a
    text index), so a search alone scans; combined with a category it scans that category.
    """
    pattern = {"$regex": re.escape(text), "$options": "i"}
    alternatives: list[dict[str, Any]] = [{name: pattern} for name in SEARCHED]
    if ITEM_ID.fullmatch(text) and int(text) < 2**63:
        alternatives.insert(0, {"_id": int(text)})
    return {"$or": alternatives}


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    #: Matching products, at most :data:`COUNT_LIMIT` + 1 (then: "more than").
    total: int

    @property
    def more_than_limit(self) -> bool:
        return self.total > COUNT_LIMIT


#: What a list row shows of a product (the rest is on its page).
LIST_FIELDS: Final = {
    "price": 1, "sale_price": 1, "sales_90d": 1, "titles": 1, "company_names": 1, "img": 1,
    "categories": 1, "first_seen": 1, "last_seen": 1, "first_crawl_id": 1, "last_crawl_id": 1,
    "vanished": 1, "price_stats.last_change": 1, "product_url": 1, "moq": 1,
    **{name: 1 for name in FLAGS},
}


async def find_products(db: AsyncDatabase[dict[str, Any]], query: ProductQuery,
                        *, limit: int | None = None) -> Page:
    """One page of a catalogue list, with its (capped) count.

    ``limit`` instead of the page: a download of up to that many rows from the start.
    """
    conditions = product_filter(query)
    skip, size = (0, limit) if limit is not None else (query.offset, query.per_page)
    rows = await db[PRODUCTS].find(conditions, LIST_FIELDS).sort(SORTS[query.sort]) \
        .skip(skip).limit(size).to_list()
    total = await db[PRODUCTS].count_documents(conditions, limit=COUNT_LIMIT + 1) \
        if conditions else min(await db[PRODUCTS].estimated_document_count(), COUNT_LIMIT + 1)
    return Page(rows, total)


async def get_product(db: AsyncDatabase[dict[str, Any]], item_id: int) -> dict[str, Any] | None:
    """A product with its ``history`` (oldest first); None when there is none with this id."""
    product = await db[PRODUCTS].find_one({"_id": item_id})
    if product is None:
        return None
    product["history"] = await db[HISTORY].find(
        {"item_id": item_id}, {"_id": 0, "item_id": 0}).sort("at", ASCENDING).to_list()
    return product


def price_steps(product: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The price-history step line: first sighting, each change, last sighting.

    The price at first sighting is the first price change's old value (the current price when
    it never changed); ``sale_price`` and ``sales_90d`` follow their own changes the same way.
    """
    tracked = ("price", "sale_price", "sales_90d")
    changes = [h for h in product.get("history", ()) if any(n in h["changes"] for n in tracked)]
    current = {name: product.get(name) for name in tracked}
    for h in reversed(changes):
        for name in tracked:
            if name in h["changes"]:
                current[name] = h["changes"][name][0]
    points = [{"at": product["first_seen"], **current}]
    for h in changes:
        current = {**current, **{n: h["changes"][n][1] for n in tracked if n in h["changes"]}}
        points.append({"at": h["at"], **current})
    if product["last_seen"] > points[-1]["at"]:
        points.append({"at": product["last_seen"], **current})
    return points


async def crawls(db: AsyncDatabase[dict[str, Any]], limit: int = 500) -> list[dict[str, Any]]:
    """Every crawl, newest first, without the heavy fields (queries, per-worker records)."""
    return await db[CRAWL_RUNS].find(
        {}, {"queries": 0, "workers": 0, "settings": 0, "resumes": 0},
    ).sort("started_at", DESCENDING).limit(limit).to_list()


async def get_crawl(db: AsyncDatabase[dict[str, Any]], crawl_id: str) -> dict[str, Any] | None:
    return await db[CRAWL_RUNS].find_one({"_id": crawl_id}, {"settings": 0})


async def categories(db: AsyncDatabase[dict[str, Any]]) -> list[int]:
    """Categories crawled (planned by some crawl): read from the crawl records, not the
    million products."""
    found = await db[CRAWL_RUNS].distinct("queries.cat_id")
    return sorted(c for c in found if isinstance(c, int))
