"""What the crawler writes to MongoDB, document by document: pure functions, no I/O.

A product sighting becomes an idempotent upsert keyed by ``item_id`` (the database, not the
crawler's memory, knows what was seen); an item that could not be stored becomes a
``rejected_items`` document that is always storable, whatever the API sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from tmapi_crawler.items import ProductItem
from tmapi_crawler.normalize import TRANSLATED_FIELDS, check_storable, rendered
from tmapi_crawler.scalars import MalformedItem

#: Where each translated field is kept, per language: ``titles.en``, ``titles.ru``, …
TRANSLATED = dict(zip(TRANSLATED_FIELDS, ("titles", "company_names", "area_from"), strict=True))


def batch_now() -> datetime:
    """One timestamp per batch: MongoDB stores milliseconds, so round here to match."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def product_update(item: ProductItem, crawl_id: str, now: datetime) -> dict[str, Any]:
    """The update document of one sighting of a product (an item normalisation accepted)."""
    language = item.context.language
    fields = dict(item.typed or {})
    fields.pop("item_id", None)
    for name, value in (item.translated or {}).items():
        fields[f"{TRANSLATED[name]}.{language}"] = value
    fields[f"raw.{language}"] = item.raw
    fields["last_seen"] = now
    fields["last_crawl_id"] = crawl_id
    # Per category, so a crawl that saw a category whole can tell what is gone from it.
    fields[f"seen_in.{item.context.cat_id}"] = crawl_id
    return {
        "$set": fields,
        "$setOnInsert": {"first_seen": now, "first_crawl_id": crawl_id},
        "$addToSet": {"categories": {"$each": [item.context.cat_id]}},
    }


def merge_update(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Fold a later sighting of the same product into a pending update (same batch)."""
    into["$set"].update(update["$set"])
    categories = into["$addToSet"]["categories"]["$each"]
    for cat_id in update["$addToSet"]["categories"]["$each"]:
        if cat_id not in categories:
            categories.append(cat_id)


def updates_by_id(
    items: Iterable[ProductItem], crawl_id: str, now: datetime
) -> dict[int, dict[str, Any]]:
    """Merge a batch's sightings into one update per product."""
    updates: dict[int, dict[str, Any]] = {}
    for item in items:
        assert item.item_id is not None
        update = product_update(item, crawl_id, now)
        pending = updates.get(item.item_id)
        if pending is None:
            updates[item.item_id] = update
        else:
            merge_update(pending, update)
    return updates


def rejected_document(
    item: ProductItem, crawl_id: str, now: datetime, reason: str | None = None
) -> dict[str, Any]:
    """A ``rejected_items`` document, storable whatever the item holds.

    ``raw`` is the item as received when MongoDB can keep it; otherwise (a 2^64, a NUL in a
    key, 17 MB of text) ``raw_text`` is a bounded rendering of it instead.
    """
    document: dict[str, Any] = {
        "crawl_id": crawl_id,
        "at": now,
        "reason": reason or item.rejection,
        "item_id": item.item_id,
        "context": asdict(item.context),
    }
    try:
        check_storable(item.raw)
    except MalformedItem:
        document["raw_text"] = rendered(item.raw)
    else:
        document["raw"] = item.raw
    return document
