"""MongoDB documents: one per product, merged across every query that saw it.

The database, not the crawler's memory, knows what was seen: every sighting becomes an
idempotent upsert keyed by ``item_id``, so a million-product crawl keeps no per-product state
in Python, and a write retried after a failure changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, UpdateOne, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

from tmapi_crawler.items import ProductItem
from tmapi_crawler.normalize import TRANSLATED_FIELDS, translated_fields
from tmapi_crawler.storage.history import (
    HISTORY,
    HISTORY_INDEXES,
    STORED_FIELDS,
    changes_since,
    history_document,
    history_upsert,
    vanish_history,
    vanish_mark,
    vanished_filter,
)

logger = logging.getLogger(__name__)

PRODUCTS = "products"
CRAWL_RUNS = "crawl_runs"
REJECTED = "rejected_items"

#: Where each translated field is kept, per language: ``titles.en``, ``titles.ru``, …
TRANSLATED = dict(zip(TRANSLATED_FIELDS, ("titles", "company_names", "area_from"), strict=True))

PRODUCT_INDEXES = [
    IndexModel([("categories", ASCENDING), ("price", ASCENDING)], name="category_price"),
    IndexModel([("categories", ASCENDING), ("free_shipping", ASCENDING), ("price", ASCENDING)],
               name="category_free_shipping_price"),
    IndexModel([("categories", ASCENDING), ("sales_90d", DESCENDING)], name="category_sales"),
    IndexModel([("price", ASCENDING)], name="price"),
    IndexModel([("sales_90d", DESCENDING)], name="sales"),
    IndexModel([("is_super_factory", ASCENDING), ("sales_90d", DESCENDING)], name="shop_sales"),
    IndexModel([("company_names.zh", ASCENDING)], name="shop_name", sparse=True),
    IndexModel([("last_seen", DESCENDING)], name="last_seen"),
    IndexModel([("first_seen", DESCENDING)], name="first_seen"),
    IndexModel([("last_crawl_id", ASCENDING)], name="last_crawl"),
    IndexModel([("first_crawl_id", ASCENDING)], name="first_crawl"),
]
#: Run fields that describe one worker of a distributed crawl, not the crawl.
_PER_WORKER = ("host", "arguments", "started_at", "status")
#: Run counts taken from the database, so already the whole crawl's (see ``run_counts``).
_CRAWL_COUNTS = ("products_seen", "new", "updated", "changed")
#: Codes a retried write can meet: a concurrent upsert of the same new ``_id`` (11000).
DUPLICATE_KEY = 11000


class StorageUnavailable(Exception):
    """MongoDB did not answer in time; the message says where it was looked for."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    created: int
    refused: int
    #: Products of the batch with a history document (changed since an earlier crawl).
    changed: int


def product_update(item: ProductItem, crawl_id: str, now: datetime) -> dict[str, Any]:
    """The update document of one sighting of a product."""
    language = item.context.language
    fields = dict(item.typed or {})
    fields.pop("item_id", None)
    for name, value in translated_fields(item.raw).items():
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


def rejected_document(item: ProductItem, crawl_id: str, now: datetime) -> dict[str, Any]:
    return {
        "crawl_id": crawl_id,
        "at": now,
        "reason": item.rejection,
        "item_id": item.item_id,
        "raw": item.raw,
        "context": asdict(item.context),
    }


class ProductStore:
    """The crawler's side of MongoDB: connection, indexes, batched writes, run records."""

    def __init__(self, uri: str, database: str, retry_timeout: float) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=5000, tz_aware=True, appname="tmapi-crawler"
        )
        # Journaled writes: an acknowledged batch survives a crash of mongod itself.
        self.db: AsyncDatabase[dict[str, Any]] = self.client.get_database(
            database, write_concern=WriteConcern(w=1, j=True)
        )
        #: Not journaled on its own: the batch's journaled upserts, sent after it, make it
        #: durable too (the journal is one sequence), and a history lost with the batch is
        #: written again with it. One journal flush per batch instead of two.
        self.history = self.db.get_collection(HISTORY, write_concern=WriteConcern(w=1))
        self.retry_timeout = retry_timeout

    async def open(self) -> None:
        """Fail fast when MongoDB is not there, then make sure the indexes exist."""
        try:
            await self.client.admin.command("ping")
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB not reachable: {exc}") from None
        await self.db[PRODUCTS].create_indexes(PRODUCT_INDEXES)
        await self.db[REJECTED].create_index([("crawl_id", ASCENDING)], name="crawl")
        await self.db[HISTORY].create_indexes(HISTORY_INDEXES)

    async def close(self) -> None:
        await self.client.close()

    async def write_products(
        self, updates: Mapping[int, dict[str, Any]], crawl_id: str, now: datetime
    ) -> BatchResult:
        """Record what changed (``tmapi_crawler.storage.history``), then upsert the batch.

        Both writes are idempotent, so a batch retried after a lost connection, or an upsert
        that raced another worker's insert of the same new product, is simply sent again.
        """
        changed = await self.record_changes(updates, crawl_id, now)
        ops = {i: UpdateOne({"_id": i}, u, upsert=True) for i, u in updates.items()}
        created, refused = await self._upsert(self.db[PRODUCTS], ops)
        return BatchResult(created, refused, changed)

    async def record_changes(
        self, updates: Mapping[int, dict[str, Any]], crawl_id: str, now: datetime
    ) -> int:
        """Write the batch's history before the batch itself; returns the products changed.

        A product reappearing in a category it had vanished from also gets the mark removed by
        its pending update.
        """
        stored = await self._retrying(self._stored, list(updates))
        changed = {}
        for document in stored:
            item_id = document["_id"]
            update = updates[item_id]
            changes, back = changes_since(document, update, crawl_id)
            if back:
                update.setdefault("$unset", {}).update({f"vanished.{c}": "" for c in back})
            if changes:
                changed[item_id] = changes
        if changed:
            await self._write_history(changed, crawl_id, now)
        return len(changed)

    async def _stored(self, ids: list[int]) -> list[dict[str, Any]]:
        return await self.db[PRODUCTS].find({"_id": {"$in": ids}}, STORED_FIELDS).to_list()

    async def _write_history(
        self, changed: Mapping[int, dict[str, list[Any]]], crawl_id: str, now: datetime
    ) -> None:
        """Insert (several times cheaper than upserts); a document this crawl already has — a
        retried batch, a second change in one crawl — is merged into instead."""
        ids = list(changed)
        documents = [history_document(i, crawl_id, now, changed[i]) for i in ids]
        try:
            await self._retrying(self.history.insert_many, documents, ordered=False)
        except BulkWriteError as exc:
            merge = {}
            for error in exc.details["writeErrors"]:
                item_id = ids[error["index"]]
                if error["code"] == DUPLICATE_KEY:
                    merge[item_id] = history_upsert(item_id, crawl_id, now, changed[item_id])
                else:
                    logger.error("MongoDB refused history document %s: %s",
                                 item_id, error["errmsg"])
            await self._upsert(self.history, merge)

    async def _upsert(
        self, collection: AsyncCollection[dict[str, Any]], ops: Mapping[Any, UpdateOne]
    ) -> tuple[int, int]:
        """Unordered upserts, retried until they land; returns (created, refused) counts."""
        pending = dict(ops)
        created = refused = 0
        while pending:
            keys = list(pending)
            try:
                result = await self._retrying(
                    collection.bulk_write, [pending[k] for k in keys], ordered=False
                )
            except BulkWriteError as exc:
                created += exc.details.get("nUpserted", 0)
                retry = {}
                for error in exc.details["writeErrors"]:
                    key = keys[error["index"]]
                    if error["code"] == DUPLICATE_KEY:
                        retry[key] = pending[key]
                    else:
                        refused += 1
                        logger.error("MongoDB refused %s document %s: %s",
                                     collection.name, key, error["errmsg"])
                pending = retry
            else:
                created += result.upserted_count
                pending = {}
        return created, refused

    async def write_rejected(self, documents: list[dict[str, Any]]) -> None:
        """Keep refused items; one whose id is readable still counts as seen in its category."""
        if not documents:
            return
        await self._retrying(self.db[REJECTED].insert_many, documents, ordered=False)
        seen: dict[tuple[int, str], list[int]] = {}
        for document in documents:
            if document["item_id"] is not None:
                key = (document["context"]["cat_id"], document["crawl_id"])
                seen.setdefault(key, []).append(document["item_id"])
        for (cat_id, crawl_id), ids in seen.items():
            await self._retrying(
                self.db[PRODUCTS].update_many,
                {"_id": {"$in": ids}},
                {"$set": {f"seen_in.{cat_id}": crawl_id}},
            )

    async def mark_vanished(self, crawl_id: str, categories: Iterable[int], now: datetime) -> int:
        """Mark the products these completely crawled categories no longer list; never delete.

        History first, then the marks, both server-side and keyed so that running this again
        changes nothing. Returns the (product, category) listings marked.
        """
        marked = 0
        for cat_id in categories:
            await self._retrying(self._aggregate, PRODUCTS, vanish_history(cat_id, crawl_id, now))
            result = await self._retrying(
                self.db[PRODUCTS].update_many,
                vanished_filter(cat_id, crawl_id),
                vanish_mark(cat_id, crawl_id, now),
            )
            marked += result.modified_count
        return marked

    async def _aggregate(self, collection: str, pipeline: list[dict[str, Any]]) -> None:
        cursor = await self.db[collection].aggregate(pipeline)
        await cursor.to_list()

    async def start_run(self, document: dict[str, Any], worker_id: str | None = None) -> None:
        """Record a run; a worker of a distributed crawl joins the crawl's one document.

        The workers of a cluster share a crawl id, so the first one creates the document and
        each records itself under ``workers.<worker_id>``; queries add up.
        """
        runs = self.db[CRAWL_RUNS]
        if worker_id is None:
            await self._retrying(runs.insert_one, document)
            return
        shared = {k: v for k, v in document.items()
                  if k not in ("_id", "queries", "host", "arguments", "status")}
        await self._retrying(runs.update_one, {"_id": document["_id"]}, {
            "$setOnInsert": shared,
            "$set": {"status": "running",
                     f"workers.{worker_id}": {k: document[k] for k in _PER_WORKER}},
            "$addToSet": {"queries": {"$each": document.get("queries", [])}},
        }, upsert=True)

    async def finish_run(
        self, crawl_id: str, fields: dict[str, Any], worker_id: str | None = None
    ) -> None:
        """Record how a run ended; a worker's counts add up into its distributed crawl's.

        Product counts come from the database and are already the crawl's; the status and
        finish reason at the top are those of the last worker that closed.
        """
        if worker_id is None:
            update: dict[str, Any] = {"$set": fields}
        else:
            counts, answers = fields.get("counts", {}), fields.get("answers", {})
            own = {k: v for k, v in counts.items() if k not in _CRAWL_COUNTS}
            update = {
                "$set": {
                    **{f"workers.{worker_id}.{k}": v for k, v in fields.items() if k != "counts"},
                    f"workers.{worker_id}.counts": own,
                    **{k: v for k, v in fields.items() if k not in ("counts", "answers")},
                    **{f"counts.{k}": counts[k] for k in _CRAWL_COUNTS if k in counts},
                },
                "$inc": {
                    **{f"counts.{k}": v for k, v in own.items()},
                    **{f"answers.{k}": v for k, v in answers.items()},
                },
            }
        await self._retrying(self.db[CRAWL_RUNS].update_one, {"_id": crawl_id}, update)

    async def run_counts(self, crawl_id: str) -> dict[str, int]:
        """Products this run saw, created and changed: exact, from the database."""
        products = self.db[PRODUCTS]
        seen = await products.count_documents({"last_crawl_id": crawl_id})
        new = await products.count_documents({"first_crawl_id": crawl_id})
        changed = await self.db[HISTORY].count_documents({"crawl_id": crawl_id})
        return {"products_seen": seen, "new": new, "updated": seen - new, "changed": changed}

    async def _retrying(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """Retry while MongoDB is unreachable (e.g. restarting), up to ``retry_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_timeout
        delay = 0.1
        while True:
            try:
                return await operation(*args, **kwargs)
            except (ConnectionFailure, OperationFailure) as exc:
                if isinstance(exc, OperationFailure) and not exc.has_error_label(
                    "RetryableWriteError"
                ):
                    raise
                if loop.time() + delay > deadline:
                    raise StorageUnavailable(f"MongoDB unavailable for "
                                             f"{self.retry_timeout:.0f} s: {exc}") from None
                logger.warning("MongoDB unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def batch_now() -> datetime:
    """One timestamp per batch: MongoDB stores milliseconds, so round here to match."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


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
