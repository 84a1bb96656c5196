"""Reading the catalogue: one set of validated queries for the web app, the exports and alerts.

Every parameter arrives as text from a user (a query string, a command line) and is parsed
here into typed values before any MongoDB document is built: a ``$where`` or ``{"$gt": ""}``
can only ever be a string compared with a field, never an operator, and searches are escaped
literals (no user regular expression reaches the server). Sorts come from a whitelist, each
backed by an index (``storage.store.PRODUCT_INDEXES``), and pages stop at :data:`MAX_OFFSET`.
A wrong parameter raises :class:`QueryError`, which the web app answers with a 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from tmapi_crawler.api import LANGUAGES
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.history import AVAILABLE_IN

#: Boolean product fields a list can be filtered on (``free_shipping=true``).
FLAGS: Final = ("free_shipping", "ship_in_48h", "is_super_factory", "is_powerful_seller",
                "low_refund_rate", "one_piece_min_order")
#: Sort names → MongoDB sort; ``_id`` last so pages never overlap, in the direction of the
#: index that gives the order (``storage.store.PRODUCT_INDEXES``).
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
MAX_DAYS: Final = 3660
#: ``scrapy crawl``'s crawl ids (``storage.runs.new_crawl_id``).
CRAWL_ID: Final = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{1,32}")
ITEM_ID: Final = re.compile(r"\d{1,19}")
_CAT_ID: Final = re.compile(r"\d{1,12}")
_BOOLS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
#: Where a search looks, besides ``_id``: every crawled language's title and shop name.
SEARCHED: Final = (*(f"titles.{lang}" for lang in LANGUAGES),
                   *(f"company_names.{lang}" for lang in LANGUAGES))
#: Movers' kinds: price drops, rises, new arrivals, vanished listings; and, where products keep
#: ``price_stats``, those at least 15 % below their 90-day average and those at their lowest.
MOVER_KINDS: Final = ("drops", "rises", "new", "vanished", "below_avg90", "at_lowest")
#: "Below its 90-day average": the price at most this share of it.
BELOW_AVG90: Final = 0.85
#: ``price_stats`` lists: the ratio, its threshold, and the index that makes it one read.
_STATS_LISTS: Final = {"below_avg90": ("price_stats.vs_avg90", BELOW_AVG90),
                       "at_lowest": ("price_stats.vs_min", 1.0)}


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


def changes_filter(*, item_ids: list[int] | None = None, crawl_id: str | None = None,
                   category: int | None = None, categories: tuple[int, ...] = (),
                   since: datetime | None = None, until: datetime | None = None,
                   fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """``history`` documents (the changes): of products, of a crawl, of a category (or any of
    ``categories``), in a time range, changing any of ``fields`` (``price``, ``sales_90d``,
    ``available_in``, …).

    ``category`` finds changes written with the product's ``categories`` (this version on).
    """
    conditions: dict[str, Any] = {}
    if item_ids is not None:
        conditions["item_id"] = {"$in": list(item_ids)}
    if crawl_id is not None:
        conditions["crawl_id"] = crawl_id
    if category is not None:
        conditions["categories"] = category
    elif categories:
        conditions["categories"] = {"$in": list(categories)}
    at: dict[str, datetime] = {}
    if since is not None:
        at["$gte"] = since
    if until is not None:
        at["$lt"] = until
    if at:
        conditions["at"] = at
    if fields:
        conditions["$or"] = [{f"changes.{name}": {"$exists": True}} for name in fields]
    return conditions


#: The order of changes: oldest first.
CHANGES_ORDER: Final = [("at", ASCENDING), ("_id", ASCENDING)]


def changes(db: AsyncDatabase[dict[str, Any]], **criteria: Any) -> Any:
    """A cursor over the changes matching :func:`changes_filter`, oldest first."""
    return db[HISTORY].find(changes_filter(**criteria)).sort(CHANGES_ORDER)


def changed_products(changed: bool, since: datetime | None = None) -> list[dict[str, Any]]:
    """Aggregation stages after a ``products`` match: keep the products with a change (at
    ``since`` or later), or (``changed`` false) those without; one indexed look-up each."""
    window = [{"$match": {"at": {"$gte": since}}}] if since is not None else []
    return [
        {"$lookup": {"from": HISTORY, "localField": "_id", "foreignField": "item_id",
                     "pipeline": [*window, {"$limit": 1}, {"$project": {"_id": 1}}],
                     "as": "_changes"}},
        {"$match": {"_changes": {"$ne" if changed else "$eq": []}}},
        {"$unset": "_changes"},
    ]


@dataclass(frozen=True, slots=True)
class MoversQuery:
    """Movers of a category (or every category): since its latest crawl's previous one, or over
    the last ``days`` days."""

    category: int | None = None
    days: int | None = None
    limit: int = PER_PAGE

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MoversQuery:
        unknown = set(params) - {"category", "days", "limit", "kind", "format"}
        if unknown:
            raise QueryError(f"unknown parameter: {sorted(unknown)[0][:40]}")
        return cls(category=parse_int(params, "category"),
                   days=parse_int(params, "days", low=1, high=MAX_DAYS),
                   limit=parse_int(params, "limit", low=1, high=MAX_PER_PAGE) or PER_PAGE)


async def latest_crawl(db: AsyncDatabase[dict[str, Any]],
                       category: int | None) -> dict[str, Any] | None:
    """The last crawl (of the category, when given) that finished: movers are measured by it."""
    conditions: dict[str, Any] = {"finished_at": {"$exists": True}}
    if category is not None:
        conditions["queries.cat_id"] = category
    return await db[CRAWL_RUNS].find_one(conditions, {"_id": 1, "started_at": 1},
                                         sort=[("started_at", DESCENDING)])


async def movers(db: AsyncDatabase[dict[str, Any]], query: MoversQuery,
                 now: datetime | None = None) -> dict[str, Any]:
    """Biggest price drops and rises (CNY and %), new arrivals and vanished listings.

    Since the previous crawl: the changes the latest crawl (of the category) recorded. Over
    ``days``: each product's first old price in the window against its last new one.
    """
    crawl = None
    base: dict[str, Any] = {} if query.category is None else {"categories": query.category}
    if query.days is not None:
        since = (now or datetime.now(UTC)) - timedelta(days=query.days)
        window: dict[str, Any] = {"at": {"$gte": since}}
    else:
        crawl = await latest_crawl(db, query.category)
        if crawl is None:
            return {"crawl": None, "days": None, "drops": [], "rises": [], "new": [],
                    "vanished": []}
        window = {"crawl_id": crawl["_id"]}
    found = await _changed(db, {**base, **window}, query, one_crawl=crawl is not None)
    new_filter = {**base, **({"first_crawl_id": crawl["_id"]} if crawl
                             else {"first_seen": window["at"]})}
    new = await db[PRODUCTS].find(new_filter, LIST_FIELDS).sort(SORTS["sales"]) \
        .limit(query.limit).to_list()
    return {"crawl": crawl and crawl["_id"], "days": query.days, **found, "new": new,
            **await _stats_lists(db, base, query.limit)}


async def _stats_lists(db: AsyncDatabase[dict[str, Any]], base: dict[str, Any],
                       limit: int) -> dict[str, list[dict[str, Any]]]:
    """Products below their 90-day average, and at their lowest ever: only where an index on
    the ratio exists (the writer keeps ``price_stats``); without one these would be scans."""
    indexed = {key for index in await (await db[PRODUCTS].list_indexes()).to_list()
               for key in index["key"]}
    found = {}
    for kind, (ratio, threshold) in _STATS_LISTS.items():
        if ratio in indexed:
            found[kind] = await db[PRODUCTS].find(
                {**base, ratio: {"$lte": threshold}}, LIST_FIELDS,
            ).sort([(ratio, ASCENDING), ("_id", ASCENDING)]).limit(limit).to_list()
    return found


async def _changed(db: AsyncDatabase[dict[str, Any]], match: dict[str, Any],
                   query: MoversQuery, *, one_crawl: bool) -> dict[str, list[dict[str, Any]]]:
    """Drops, rises and vanished listings, from one pass over the matching changes.

    Drops and rises: per product, the first old and last new price, ranked by %
    (``one_crawl``: a crawl writes one change document per product, so nothing is grouped).
    Vanished: availability changes that removed a category (this one, when given).
    """
    ends = [{"$project": {"_id": "$item_id", "at": 1,
                          "from": {"$arrayElemAt": ["$changes.price", 0]},
                          "to": {"$arrayElemAt": ["$changes.price", 1]}}}] if one_crawl else [
        {"$sort": {"item_id": 1, "at": 1}},
        {"$group": {"_id": "$item_id",
                    "from": {"$first": {"$arrayElemAt": ["$changes.price", 0]}},
                    "to": {"$last": {"$arrayElemAt": ["$changes.price", 1]}},
                    "at": {"$last": "$at"}}},
    ]
    moves: list[dict[str, Any]] = [
        {"$match": {"changes.price": {"$exists": True}}}, *ends,
        {"$match": {"from": {"$gt": 0}, "to": {"$ne": None}}},
        {"$set": {"change": {"$subtract": ["$to", "$from"]},
                  "pct": {"$multiply": [100, {"$divide": [{"$subtract": ["$to", "$from"]},
                                                          "$from"]}]}}},
    ]
    facets = {kind: [*moves, {"$match": {"pct": condition}}, {"$sort": {"pct": order, "_id": 1}},
                     {"$limit": query.limit}, *_with_product()]
              for kind, order, condition in (("drops", 1, {"$lt": 0}), ("rises", -1, {"$gt": 0}))}
    before, after = ({"$ifNull": [{"$arrayElemAt": [f"$changes.{AVAILABLE_IN}", i]}, []]}
                     for i in (0, 1))
    removed = (query.category if query.category is not None
               else {"$first": {"$setDifference": [before, after]}})
    facets["vanished"] = [
        {"$match": {f"changes.{AVAILABLE_IN}": {"$exists": True}}},
        {"$match": {"$expr": {"$and": [{"$in": [removed, before]},
                                       {"$not": {"$in": [removed, after]}}]}}},
        {"$sort": {"at": -1, "_id": 1}}, {"$limit": query.limit},
        {"$project": {"_id": "$item_id", "at": 1, "crawl_id": 1, "from": before, "to": after}},
        *_with_product(),
    ]
    found = await (await db[HISTORY].aggregate([{"$match": match}, {"$facet": facets}])).to_list()
    return found[0]


def _with_product() -> list[dict[str, Any]]:
    """Join a row's product (titles, image, current price) after the ranking: a page's worth."""
    return [
        {"$lookup": {"from": PRODUCTS, "localField": "_id", "foreignField": "_id",
                     "as": "product", "pipeline": [{"$project": LIST_FIELDS}]}},
        {"$set": {"product": {"$first": "$product"}}},
    ]


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
