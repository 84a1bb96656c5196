"""``scrapy export``'s records: what MongoDB holds, in the crawl feed's shape, for nothing.

The feed (``exporters.py``) writes records while a crawl runs, so getting the data out again
meant paying for the crawl again. These records come from the stored documents instead: the
feed's columns (``item_id``, titles and shop names per language, prices, shop, flags, links,
categories) plus what only the database knows (``first_seen``, ``last_seen``, the categories a
product ``vanished`` from, ``price_stats`` where it exists), or one row per changed field of
``history``. Every record of one export has the same keys, so CSV and XLSX columns agree; the
keys that vary with the data (languages, ``price_stats``) are read from MongoDB first, by one
aggregation over the same filter, and nothing else is held: documents stream from a cursor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pymongo.database import Database

from tmapi_crawler import api
from tmapi_crawler.exporters import FLAG_FIELDS, LINK_FIELDS, PRICE_FIELDS, SHOP_FIELDS
from tmapi_crawler.storage import change_queries, queries
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.history import AVAILABLE_IN
from tmapi_crawler.storage.queries import QueryError

#: What can be exported: ``scrapy export <what>``.
WHAT: Final = ("products", "changes")
PRICE_STATS: Final = "price_stats"
#: The stored fields a product record reads (never ``raw``: the bulk of a document).
_PRODUCT_FIELDS: Final = {name: 1 for name in (
    "titles", "company_names", *PRICE_FIELDS, *SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS,
    "categories", "first_seen", "last_seen", "vanished", PRICE_STATS)}
#: Values ``iso_times`` leaves alone without looking further.
_PLAIN: Final = frozenset({str, int, float, bool, type(None), list})
#: Documents per cursor batch: a bounded slice of the export in memory at a time.
BATCH: Final = 1000


@dataclass(frozen=True)
class Layout:
    """The keys that vary with the data: languages, and ``price_stats``'s paths."""

    languages: tuple[str, ...] = ()
    price_stats: tuple[tuple[str, ...], ...] = ()


def _keys_of(field: str) -> dict[str, Any]:
    """``field``'s keys, as ``"<field>.<key>"`` strings (an aggregation expression)."""
    return {"$map": {"input": {"$objectToArray": {"$ifNull": [f"${field}", {}]}},
                     "in": {"$concat": [f"{field}.", "$$this.k"]}}}


#: ``price_stats``'s paths, two levels deep (``price_stats.d90.min``), as strings; a null
#: (``last_change`` of a price that never changed) names no path: its object's keys do.
_STATS_PATHS: Final = {"$reduce": {
    "input": {"$objectToArray": {"$ifNull": [f"${PRICE_STATS}", {}]}},
    "initialValue": [],
    "in": {"$concatArrays": ["$$value", {"$switch": {"branches": [
        {"case": {"$eq": [{"$type": "$$this.v"}, "object"]},
         "then": {"$map": {"input": {"$objectToArray": "$$this.v"}, "as": "sub",
                           "in": {"$concat": [f"{PRICE_STATS}.", "$$this.k", ".", "$$sub.k"]}}}},
        {"case": {"$eq": [{"$type": "$$this.v"}, "null"]}, "then": []},
    ], "default": [{"$concat": [f"{PRICE_STATS}.", "$$this.k"]}]}}]},
}}


def product_layout(db: Database, selection: list[dict[str, Any]]) -> Layout:
    """The languages and ``price_stats`` paths of the selected products, read by one
    aggregation on the server (its answer is a few dozen strings)."""
    rows = db[PRODUCTS].aggregate([
        *selection,
        {"$project": {"_id": 0, "k": {"$concatArrays": [
            _keys_of("titles"), _keys_of("company_names"), _STATS_PATHS]}}},
        {"$unwind": "$k"},
        {"$group": {"_id": "$k"}},
    ])
    languages: set[str] = set()
    paths: set[tuple[str, ...]] = set()
    for row in rows:
        head, *rest = row["_id"].split(".")
        if head == PRICE_STATS:
            paths.add(tuple(rest))
        else:
            languages.add(rest[0])
    # A key that is a number in one product and an object in another: its keys are columns.
    leaves = {path for path in paths if not any(
        other[:len(path)] == path for other in paths if len(other) > len(path))}
    known = {language: n for n, language in enumerate(api.LANGUAGES)}
    return Layout(tuple(sorted(languages, key=lambda lang: (known.get(lang, len(known)), lang))),
                  tuple(sorted(leaves)))


def _stats(document: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """``price_stats`` with every path of the export (None where this product has none)."""
    stored = document.get(PRICE_STATS) or {}
    out: dict[str, Any] = {}
    for path in paths:
        value: Any = stored
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        into = out
        for key in path[:-1]:
            into = into.setdefault(key, {})
        into[path[-1]] = value
    return out


def product_record(document: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    """One stored product as the feed's record, plus what only the database knows."""
    titles = document.get("titles") or {}
    shops = document.get("company_names") or {}
    record = {
        "item_id": document.get("_id"),
        "titles": {language: titles.get(language) for language in layout.languages},
        **{name: document.get(name) for name in PRICE_FIELDS},
        "shop_names": {language: shops.get(language) for language in layout.languages},
        **{name: document.get(name) for name in (*SHOP_FIELDS, *FLAG_FIELDS, *LINK_FIELDS)},
        "categories": sorted(document.get("categories") or ()),
        "first_seen": document.get("first_seen"),
        "last_seen": document.get("last_seen"),
        "vanished": sorted(int(cat_id) for cat_id in document.get("vanished") or ()),
    }
    if layout.price_stats:
        record[PRICE_STATS] = _stats(document, layout.price_stats)
    return record


def products(db: Database, selection: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The selected products' records (``product_selection``), streamed."""
    layout = product_layout(db, selection)
    cursor = db[PRODUCTS].aggregate([*selection, {"$project": _PRODUCT_FIELDS}],
                                    batchSize=BATCH)
    with cursor:
        for document in cursor:
            yield product_record(document, layout)


def change_pct(old: Any, new: Any) -> float | None:
    """The change in percent of ``old``, for numbers only (not for a list of categories)."""
    numbers = (int, float)
    if (isinstance(old, numbers) and isinstance(new, numbers) and old
            and not isinstance(old, bool) and not isinstance(new, bool)):
        return round((new - old) / old * 100, 2)
    return None


def change_rows(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One ``history`` document as a row per changed field."""
    for field, (old, new) in sorted(document.get("changes", {}).items()):
        yield {"item_id": document["item_id"], "crawl_id": document["crawl_id"],
               "at": document["at"], "field": field, "old": old, "new": new,
               "change_pct": change_pct(old, new)}


def changes(db: Database, selection: Mapping[str, Any],
            vanished: bool | None = None) -> Iterator[dict[str, Any]]:
    """The selected changes' rows (``change_selection``), oldest first, streamed;
    ``vanished``: only the rows that say a product left a category (True), or the others."""
    cursor = db[HISTORY].find(dict(selection)).sort(change_queries.CHANGES_ORDER).batch_size(BATCH)
    with cursor:
        for document in cursor:
            for row in change_rows(document):
                if vanished is None or vanished_row(row) == vanished:
                    yield row


def iso_times(value: Any) -> Any:
    """Times as ISO 8601 text (``2026-12-05T21:03:35.120000+00:00``) for CSV and JSON."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: item if type(item) in _PLAIN else iso_times(item)
                for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Filters:
    """``-a`` arguments of ``scrapy export``, checked."""

    cat_ids: tuple[int, ...] = ()
    since: str | None = None
    changed: bool | None = None
    vanished: bool | None = None


FILTERS: Final = ("cat_id", "since", "changed", "vanished")


def parse_filters(arguments: Mapping[str, str], what: str) -> Filters:
    """The filters of ``-a NAME=VALUE`` arguments; a ``QueryError`` names the bad one."""
    unknown = sorted(set(arguments) - set(FILTERS))
    if unknown:
        raise QueryError(f"unknown filter {unknown[0]!r} (filters: {', '.join(FILTERS)})")
    cat_ids = tuple(queries.parse_int({"cat_id": part}, "cat_id")
                    for part in arguments.get("cat_id", "").split(",") if part.strip())
    if "cat_id" in arguments and not cat_ids:
        raise QueryError("cat_id: expected category ids (cat_id=1031922,1031923)")
    changed = queries.parse_bool(arguments, "changed")
    if what == "changes" and changed is not None:
        raise QueryError("changed: every change is a change; use it with products")
    since = arguments.get("since")
    if since is not None and not since.strip():
        raise QueryError("since: expected a crawl id or an ISO date (2026-12-01)")
    return Filters(tuple(c for c in cat_ids if c is not None), since, changed,
                   queries.parse_bool(arguments, "vanished"))


def since_time(db: Database, since: str) -> datetime:
    """``since`` as a time: a crawl's start, or an ISO date or time (UTC unless it says)."""
    if queries.CRAWL_ID.fullmatch(since):
        run = db[CRAWL_RUNS].find_one({"_id": since}, {"started_at": 1})
        if run is None or not isinstance(run.get("started_at"), datetime):
            raise QueryError(f"since: no crawl {since} in this database")
        return run["started_at"]
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise QueryError(f"since: {since!r} is neither a crawl id (20261126T214501Z-3fa2c1) "
                         "nor an ISO date (2026-12-01 or 2026-12-01T08:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def product_selection(db: Database, filters: Filters) -> list[dict[str, Any]]:
    """Aggregation stages selecting the products of ``filters``, in ``item_id`` order."""
    since = since_time(db, filters.since) if filters.since else None
    # One category: ``vanished`` means gone from it, as in the web app; several: from any.
    one = filters.cat_ids[0] if len(filters.cat_ids) == 1 else None
    query = queries.ProductQuery(category=one, categories=filters.cat_ids if one is None else (),
                                 seen_since=since, vanished=filters.vanished)
    stages: list[dict[str, Any]] = [{"$match": queries.product_filter(query)},
                                    {"$sort": {"_id": 1}}]
    if filters.changed is not None:
        stages += change_queries.changed_products(filters.changed, since)
    return stages


def change_selection(db: Database, filters: Filters) -> dict[str, Any]:
    """The ``history`` filter of ``filters``."""
    return change_queries.changes_filter(
        categories=filters.cat_ids,
        since=since_time(db, filters.since) if filters.since else None,
        fields=(AVAILABLE_IN,) if filters.vanished else ())


def vanished_row(row: Mapping[str, Any]) -> bool:
    """A row saying a product left a category."""
    return (row["field"] == AVAILABLE_IN
            and bool(set(row["old"] or ()) - set(row["new"] or ())))
