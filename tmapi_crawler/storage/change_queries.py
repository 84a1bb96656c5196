"""Reading what changed: the change rows (exports, alerts) and the movers (the web app).

Both read ``history`` (``storage.history`` writes it), validated like the catalogue's queries
(``storage.queries``, whose parsing and list fields they share): one place, so that a price
drop means the same on the movers page, in an export and in an alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.history import AVAILABLE_IN
from tmapi_crawler.storage.queries import (
    LIST_FIELDS,
    MAX_PER_PAGE,
    PER_PAGE,
    SORTS,
    QueryError,
    parse_int,
)

#: The longest window movers look back over (``days``), ten years.
MAX_DAYS: Final = 3660
#: Movers' kinds: price drops, rises, new arrivals, vanished listings; and, where products keep
#: ``price_stats``, those at least 15 % below their 90-day average and those at their lowest.
MOVER_KINDS: Final = ("drops", "rises", "new", "vanished", "below_avg90", "at_lowest")
#: "Below its 90-day average": the price at most this share of it.
BELOW_AVG90: Final = 0.85
#: ``price_stats`` lists: the ratio, its threshold, and the index that makes it one read.
_STATS_LISTS: Final = {"below_avg90": ("price_stats.vs_avg90", BELOW_AVG90),
                       "at_lowest": ("price_stats.vs_min", 1.0)}


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
