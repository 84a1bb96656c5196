"""What changed between crawls: one ``history`` document per changed product and crawl.

The comparison runs per batch, against one read of the batch's stored products, and its
documents are written *before* the batch's upserts, keyed by ``<item_id>:<crawl_id>``. A batch
retried after a failure therefore finds either the earlier crawl's values again (and rewrites
the same documents) or its own crawl's (and has nothing to record): never a duplicate, never a
lost change. Nothing is kept in Python between batches.

History document::

    {_id: "<item_id>:<crawl_id>", item_id, crawl_id, at, categories,
     changes: {price|sale_price|sales_90d|moq|available_in: [old, new]}}

``categories`` are the product's (as in ``products``) when it changed: what makes "the movers
of a category" one indexed read (``storage.queries``).

``available_in`` is the sorted list of categories a product is listed in: every category it was
ever found under, except those it *vanished* from. A product vanishes from a category when a
crawl that saw the whole category did not find it there — on none of its own pages of the
category (``crawl_pages``), whatever other crawls stored meanwhile; the product keeps
``vanished.<cat_id> = {crawl_id: <last crawl that saw it there>, noticed_by, at}`` (it is never
deleted), and loses the mark when it is seen there again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from tmapi_crawler.storage.collections import HISTORY

#: Typed fields whose change between two crawls is history.
TRACKED_FIELDS = ("price", "sale_price", "sales_90d", "moq")
#: The history name of a product's availability: the categories it is listed in.
AVAILABLE_IN = "available_in"
#: What the comparison reads of a stored product.
STORED_FIELDS = {name: 1 for name in (*TRACKED_FIELDS, "last_crawl_id", "categories", "vanished")}

HISTORY_INDEXES = [
    IndexModel([("item_id", ASCENDING), ("at", DESCENDING)], name="item_at"),
    IndexModel([("crawl_id", ASCENDING)], name="crawl"),
    IndexModel([("at", DESCENDING)], name="at"),
    IndexModel([("categories", ASCENDING), ("crawl_id", ASCENDING)], name="category_crawl"),
    IndexModel([("categories", ASCENDING), ("at", DESCENDING)], name="category_at"),
]


def history_id(item_id: int, crawl_id: str) -> str:
    return f"{item_id}:{crawl_id}"


def categories_of(stored: Mapping[str, Any], update: Mapping[str, Any]) -> list[int]:
    """The product's categories once the update is stored (what its history document keeps)."""
    added = update["$addToSet"]["categories"]["$each"]
    return sorted(set(stored.get("categories") or ()) | set(added))


def changes_since(
    stored: Mapping[str, Any], update: Mapping[str, Any], crawl_id: str
) -> tuple[dict[str, list[Any]], list[int]]:
    """A sighting's changes to a stored product, and the categories it reappeared in.

    Values are compared only with an earlier crawl's: a product this crawl already stored
    (another language, sort or category) has this crawl's values. Reappearing in a category it
    had vanished from changes ``available_in`` whichever crawl stored it last.
    """
    changes: dict[str, list[Any]] = {}
    new = update["$set"]
    if stored.get("last_crawl_id") != crawl_id:
        for name in TRACKED_FIELDS:
            old = stored.get(name)
            if new[name] != old:
                changes[name] = [old, new[name]]
    vanished = stored.get("vanished")
    if not vanished:
        return changes, []
    categories = update["$addToSet"]["categories"]["$each"]
    back = [cat_id for cat_id in categories if str(cat_id) in vanished]
    if back:
        known = set(stored.get("categories") or ())
        gone = {int(cat_id) for cat_id in vanished}
        changes[AVAILABLE_IN] = [
            sorted(known - gone),
            sorted((known | set(categories)) - (gone - set(back))),
        ]
    return changes, back


def _first_old(name: str, old: Any, new: Any) -> list[Any]:
    """``[old, new]`` in an update pipeline; an earlier write of the same crawl keeps its old.

    A product can reappear in two categories in two batches of one crawl: its document then
    says what it was before the crawl and after the last change.
    """
    return [{"$ifNull": [{"$arrayElemAt": [f"$changes.{name}", 0]}, old]}, new]


def history_document(
    item_id: int, crawl_id: str, now: datetime, changes: Mapping[str, list[Any]],
    categories: list[int],
) -> dict[str, Any]:
    return {"_id": history_id(item_id, crawl_id), "item_id": item_id, "crawl_id": crawl_id,
            "at": now, "categories": categories, "changes": dict(changes)}


def history_upsert(
    item_id: int, crawl_id: str, now: datetime, changes: Mapping[str, list[Any]],
    categories: list[int],
) -> UpdateOne:
    """The same, merged into the crawl's document if there is one already."""
    fields: dict[str, Any] = {
        "item_id": {"$literal": item_id},
        "crawl_id": {"$literal": crawl_id},
        "at": {"$ifNull": ["$at", {"$literal": now}]},
        "categories": {"$setUnion": [{"$ifNull": ["$categories", []]}, {"$literal": categories}]},
    }
    for name, (old, new) in changes.items():
        fields[f"changes.{name}"] = _first_old(name, {"$literal": old}, {"$literal": new})
    return UpdateOne({"_id": history_id(item_id, crawl_id)}, [{"$set": fields}], upsert=True)


def vanished_filter(cat_id: int, crawl_id: str, seen: Sequence[int]) -> dict[str, Any]:
    """Products listed in the category that this crawl did not see there, not yet marked.

    ``seen``: the ids the crawl's own ledger pages of the category show (``crawl_pages``,
    every run of it, replayed pages included). ``seen_in`` alone is not enough: another crawl
    of the category overwrites it, at the same time or between two runs of this one.
    """
    return {
        "categories": cat_id,
        f"seen_in.{cat_id}": {"$ne": crawl_id},
        f"vanished.{cat_id}": {"$exists": False},
        "_id": {"$nin": list(seen)},
    }


#: ``available_in`` of a stored product, as an aggregation expression.
_AVAILABLE = {"$sortArray": {"input": {"$setDifference": ["$categories", {"$map": {
    "input": {"$objectToArray": {"$ifNull": ["$vanished", {}]}},
    "in": {"$toInt": "$$this.k"},
}}]}, "sortBy": 1}}


def vanish_history(cat_id: int, crawl_id: str, seen: Sequence[int], now: datetime
                   ) -> list[dict[str, Any]]:
    """Aggregation writing the history of the category's vanishing products, server-side."""
    return [
        {"$match": vanished_filter(cat_id, crawl_id, seen)},
        {"$project": {
            "_id": {"$concat": [{"$toString": "$_id"}, {"$literal": f":{crawl_id}"}]},
            "item_id": "$_id",
            "crawl_id": {"$literal": crawl_id},
            "at": {"$literal": now},
            "categories": "$categories",
            f"changes.{AVAILABLE_IN}": {"$let": {"vars": {"before": _AVAILABLE}, "in": [
                "$$before", {"$filter": {"input": "$$before", "cond": {"$ne": ["$$this", cat_id]}}},
            ]}},
        }},
        {"$merge": {
            "into": HISTORY,
            "on": "_id",
            "whenMatched": [{"$set": {f"changes.{AVAILABLE_IN}": _first_old(
                AVAILABLE_IN,
                {"$arrayElemAt": [f"$$new.changes.{AVAILABLE_IN}", 0]},
                {"$arrayElemAt": [f"$$new.changes.{AVAILABLE_IN}", 1]},
            )}}],
            "whenNotMatched": "insert",
        }},
    ]


def vanish_mark(cat_id: int, crawl_id: str, now: datetime) -> list[dict[str, Any]]:
    """Update pipeline marking a product gone from the category, with the crawl that last saw it.

    Products stored before ``seen_in`` existed fall back to the last crawl that saw them at all.
    """
    return [{"$set": {f"vanished.{cat_id}": {
        "crawl_id": {"$ifNull": [f"$seen_in.{cat_id}", "$last_crawl_id"]},
        "noticed_by": {"$literal": crawl_id},
        "at": {"$literal": now},
    }}}]
