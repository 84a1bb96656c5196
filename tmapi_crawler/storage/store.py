"""The crawler's side of MongoDB: one connection per crawl, batched idempotent writes.

The database, not the crawler's memory, knows what was seen: every sighting becomes an
idempotent upsert keyed by ``item_id`` (``storage.documents``), so a million-product crawl keeps
no per-product state in Python, and a write retried after a failure changes nothing twice.

A document MongoDB refuses is refused alone: the rest of its batch is written, and the refusal
comes back to the writer with its reason (a ``rejected_items`` document, then). Only a database
that does not answer, or refuses everything, stops the crawl.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

from bson.errors import BSONError
from pymongo import ASCENDING, UpdateOne, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    OperationFailure,
)

from tmapi_crawler.quoting import shown
from tmapi_crawler.storage import prices
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, LEDGER, PRODUCTS, REJECTED
from tmapi_crawler.storage.connection import Connection
from tmapi_crawler.storage.history import (
    STORED_FIELDS,
    categories_of,
    changes_since,
    history_document,
    history_id,
    history_upsert,
    vanish_history,
    vanish_mark,
    vanished_filter,
)
from tmapi_crawler.storage.indexes import ensure_indexes
from tmapi_crawler.storage.ledger import STORED as LEDGER_STORED

if TYPE_CHECKING:
    from datetime import datetime

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Run fields that describe one worker of a distributed crawl, not the crawl.
_PER_WORKER = ("host", "arguments", "started_at", "status")
#: Codes a retried write can meet: a concurrent upsert of the same new ``_id`` (11000).
DUPLICATE_KEY = 11000
#: Server errors that fail a whole batch for one document's sake (MongoDB answers some of
#: them for the command, not per operation): BadValue, Overflow (nested too deep),
#: BSONObjectTooLarge, a document grown past 16 MB, $-prefixed / empty / dotted field names.
_DOCUMENT_CODES: Final = frozenset({2, 15, 10334, 17419, 17420, 52, 56, 57})
#: Errors raised before anything is sent, by encoding one document.
_ENCODING_ERRORS: Final = (BSONError, DocumentTooLarge, OverflowError, UnicodeEncodeError,
                           RecursionError)

_STORES: WeakKeyDictionary[Crawler, ProductStore] = WeakKeyDictionary()


def _document_error(error: BaseException) -> bool:
    """Whether ``error`` is one document's fault (write the others), not the database's."""
    if isinstance(error, _ENCODING_ERRORS):
        return True
    return (isinstance(error, OperationFailure) and not isinstance(error, BulkWriteError)
            and error.code in _DOCUMENT_CODES)


@dataclass(frozen=True, slots=True)
class BatchResult:
    created: int
    #: Products of the batch with a history document (changed since an earlier crawl).
    changed: int
    #: Products MongoDB refused, with its reason (cut short): nothing of them was written.
    refused: dict[int, str] = field(default_factory=dict)


class ProductStore(Connection):
    """Batched writes and run records on the crawl's connection: one per crawl (:meth:`of`)."""

    def __init__(self, uri: str, database: str, retry_timeout: float,
                 price_stats: bool = True) -> None:
        super().__init__(uri, database, retry_timeout)
        #: Keep ``price_stats`` (``storage.prices``); off only to measure what it costs (B9).
        self.price_stats = price_stats
        self._history: AsyncCollection[dict[str, Any]] | None = None

    @classmethod
    def of(cls, crawler: Crawler) -> ProductStore:
        """The crawl's store, shared by the writer (pipeline) and the run recorder (extension)."""
        store = _STORES.get(crawler)
        if store is None:
            settings = crawler.settings
            store = cls(settings["MONGO_URI"], settings["MONGO_DATABASE"],
                        settings.getfloat("MONGO_RETRY_TIMEOUT"))
            store.embedded_dir = settings["MONGO_EMBEDDED_DIR"]
            _STORES[crawler] = store
        return store

    async def open(self) -> None:
        """Connect, then make sure the indexes exist. Opening an open store does nothing."""
        if self.opened:
            return
        client, db = await self._connect()
        await ensure_indexes(db)
        self.client, self._db = client, db
        #: Not journaled on its own: the batch's journaled upserts, sent after it, make it
        #: durable too (the journal is one sequence), and a history lost with the batch is
        #: written again with it. One journal flush per batch instead of two.
        self._history = db.get_collection(HISTORY, write_concern=WriteConcern(w=1))

    async def close(self) -> None:
        self._history = None
        await super().close()

    @property
    def history(self) -> AsyncCollection[dict[str, Any]]:
        assert self._history is not None, "ProductStore used before open()"
        return self._history

    async def write_products(
        self, updates: Mapping[int, dict[str, Any]], crawl_id: str, now: datetime
    ) -> BatchResult:
        """Record what changed (``tmapi_crawler.storage.history``), then upsert the batch.

        Both writes are idempotent, so a batch retried after a lost connection, or an upsert
        that raced another worker's insert of the same new product, is simply sent again. A
        product MongoDB refuses keeps no history of this batch: history tells what was stored.
        """
        changed, inserted = await self.record_changes(updates, crawl_id, now)
        ops = {i: UpdateOne({"_id": i}, u, upsert=True) for i, u in updates.items()}
        created, refused = await self._upsert(self.db[PRODUCTS], ops)
        if unstored := [history_id(i, crawl_id) for i in refused if i in inserted]:
            await self._retrying(self.history.delete_many, {"_id": {"$in": unstored}})
        return BatchResult(created, len(changed - refused.keys()), refused)

    async def record_changes(
        self, updates: Mapping[int, dict[str, Any]], crawl_id: str, now: datetime
    ) -> tuple[set[int], set[int]]:
        """Write the batch's history before the batch itself.

        Returns the products that changed, and those whose history document this call
        inserted (rather than merged into one an earlier batch of the crawl wrote). A product
        reappearing in a category it had vanished from also gets the mark removed by its
        pending update.
        """
        stored = await self._retrying(self._stored, list(updates))
        changed, categories = {}, {}
        for document in stored:
            item_id = document["_id"]
            update = updates[item_id]
            changes, back = changes_since(document, update, crawl_id)
            if back:
                update.setdefault("$unset", {}).update({f"vanished.{c}": "" for c in back})
            if changes:
                changed[item_id] = changes
                categories[item_id] = categories_of(document, update)
        if self.price_stats:
            await self._advance_prices(updates, stored, changed, crawl_id, now)
        inserted = (await self._write_history(changed, categories, crawl_id, now)
                    if changed else set())
        return set(changed), inserted

    async def _stored(self, ids: list[int]) -> list[dict[str, Any]]:
        fields = {**STORED_FIELDS, **prices.PRICE_FIELDS} if self.price_stats else STORED_FIELDS
        return await self.db[PRODUCTS].find({"_id": {"$in": ids}}, fields).to_list()

    async def _advance_prices(
        self, updates: Mapping[int, dict[str, Any]], stored: list[dict[str, Any]],
        changed: Mapping[int, dict[str, list[Any]]], crawl_id: str, now: datetime,
    ) -> None:
        """Add each product's ``price_stats`` (and the state they come from) to its update:
        from what the batch already read, in the same write, never from ``history``, except
        once for a product stored before ``price_steps`` existed."""
        documents = {d["_id"]: d for d in stored}
        legacy = [i for i, d in documents.items() if "price_steps" not in d]
        replayed = await self._retrying(self._replayed, documents, legacy, crawl_id) if legacy \
            else {}
        for item_id, update in updates.items():
            fields = update["$set"]
            document = documents.get(item_id)
            if document is None:
                steps, last_change = prices.new_steps(now, fields["price"]), None
            elif item_id in replayed:
                steps, last_change = replayed[item_id]
            else:
                steps = document["price_steps"]
                last_change = document["price_stats"]["last_change"]
            change = changed.get(item_id, {}).get("price")
            fields["price_steps"], fields["price_stats"] = prices.advance(
                steps, last_change, now, fields["price"], change)

    async def _replayed(
        self, documents: Mapping[int, dict[str, Any]], ids: list[int], crawl_id: str
    ) -> dict[int, tuple[dict[str, Any], dict[str, Any] | None]]:
        """The price state of products stored before it was kept, from their earlier crawls'
        price changes."""
        changes: dict[int, list[tuple[datetime, list[Any]]]] = {i: [] for i in ids}
        async for entry in self.db[HISTORY].find(
            {"item_id": {"$in": ids}, "crawl_id": {"$ne": crawl_id},
             "changes.price": {"$exists": True}},
            {"item_id": 1, "at": 1, "changes.price": 1},
        ).sort([("item_id", ASCENDING), ("at", ASCENDING)]):
            changes[entry["item_id"]].append((entry["at"], entry["changes"]["price"]))
        return {i: prices.replayed(documents[i]["first_seen"], changes[i],
                                   documents[i].get("price"), documents[i]["last_seen"])
                for i in ids}

    async def _write_history(
        self, changed: Mapping[int, dict[str, list[Any]]], categories: Mapping[int, list[int]],
        crawl_id: str, now: datetime,
    ) -> set[int]:
        """Insert (several times cheaper than upserts); a document this crawl already has — a
        retried batch, a second change in one crawl — is merged into instead. Returns the
        products whose document was inserted."""
        ids = list(changed)
        documents = [history_document(i, crawl_id, now, changed[i], categories[i])
                     for i in ids]
        try:
            await self._retrying(self.history.insert_many, documents, ordered=False)
        except BulkWriteError as exc:
            merge, failed = {}, set()
            for error in exc.details["writeErrors"]:
                item_id = ids[error["index"]]
                failed.add(item_id)
                if error["code"] == DUPLICATE_KEY:
                    merge[item_id] = history_upsert(item_id, crawl_id, now, changed[item_id],
                                                    categories[item_id])
                else:
                    logger.error("MongoDB refused history document %s: %s",
                                 item_id, shown(error["errmsg"]))
            await self._upsert(self.history, merge)
            return set(ids) - failed
        return set(ids)

    async def _upsert(
        self, collection: AsyncCollection[dict[str, Any]], ops: Mapping[Any, UpdateOne]
    ) -> tuple[int, dict[Any, str]]:
        """Unordered upserts, retried until they land; returns how many were created, and the
        operations MongoDB refused with why. A batch that fails as a whole for one document's
        sake is written one operation at a time, so that only that one is refused."""
        pending = dict(ops)
        created = 0
        refused: dict[Any, str] = {}
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
                        refused[key] = shown(error["errmsg"])
                pending = retry
            except Exception as exc:
                if not _document_error(exc):
                    raise
                if len(keys) == 1:
                    refused[keys[0]] = shown(f"{type(exc).__name__}: {exc}")
                else:
                    for key in keys:
                        one_created, one_refused = await self._upsert(collection,
                                                                      {key: pending[key]})
                        created += one_created
                        refused.update(one_refused)
                pending = {}
            else:
                created += result.upserted_count
                pending = {}
        for key, reason in refused.items():
            logger.error("MongoDB refused %s document %s: %s", collection.name, key, reason)
        return created, refused

    async def write_rejected(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep refused items; returns those MongoDB would not take either (to be spilled).

        One whose id is readable still counts as seen in its category: it is listed there, so
        it must not be marked vanished from it.
        """
        if not documents:
            return []
        unstored: list[dict[str, Any]] = []
        try:
            await self._retrying(self.db[REJECTED].insert_many, documents, ordered=False)
        except BulkWriteError as exc:
            for error in exc.details["writeErrors"]:
                unstored.append(documents[error["index"]])
                logger.error("MongoDB refused a rejected item: %s", shown(error["errmsg"]))
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
        return unstored

    async def mark_vanished(self, crawl_id: str, categories: Iterable[int], now: datetime) -> int:
        """Mark the products these completely crawled categories no longer list; never delete.

        History first, then the marks, both server-side and keyed so that running this again
        changes nothing. Returns the (product, category) listings marked.
        """
        marked = 0
        for cat_id in categories:
            seen = await self._retrying(self.seen_by, crawl_id, cat_id)
            await self._retrying(self._aggregate, PRODUCTS,
                                 vanish_history(cat_id, crawl_id, seen, now))
            result = await self._retrying(
                self.db[PRODUCTS].update_many,
                vanished_filter(cat_id, crawl_id, seen),
                vanish_mark(cat_id, crawl_id, now),
            )
            marked += result.modified_count
        return marked

    async def seen_by(self, crawl_id: str, cat_id: int) -> list[int]:
        """The products the crawl's own ledger pages of the category show, over all its runs:
        its sightings, which no other crawl of the category can overwrite."""
        cursor = await self.db[LEDGER].aggregate([
            {"$match": {"crawl_id": crawl_id, "cat_id": cat_id, "state": LEDGER_STORED}},
            {"$unwind": "$summary.ids"},
            {"$group": {"_id": "$summary.ids"}},
        ])
        return [document["_id"] async for document in cursor]

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

    async def finish_run(self, crawl_id: str, fields: dict[str, Any]) -> None:
        """Record how a run of one process ended."""
        await self._retrying(self.db[CRAWL_RUNS].update_one, {"_id": crawl_id}, {"$set": fields})

    async def finish_worker_run(
        self, crawl_id: str, worker_id: str, fields: dict[str, Any],
        crawl: dict[str, Any], statuses: Mapping[str, str] | None = None,
    ) -> None:
        """Record how a worker of a distributed crawl ended, under ``workers.<worker_id>``.

        ``crawl`` holds the crawl's own fields (its counts, its answers, how it ended), set
        field by field: they come from the cluster's counters, so the last worker to close
        records the latest of them, and nothing is added twice. ``statuses``: other workers'
        status, as the crawl's finaliser found them (killed ones: dead).
        """
        update = {
            **{f"workers.{worker_id}.{k}": v for k, v in fields.items()},
            **{k: v for k, v in crawl.items() if k != "counts"},
            **{f"counts.{k}": v for k, v in crawl.get("counts", {}).items()},
            **{f"workers.{w}.status": status for w, status in (statuses or {}).items()},
        }
        await self._retrying(self.db[CRAWL_RUNS].update_one, {"_id": crawl_id}, {"$set": update})

    async def run_counts(self, crawl_id: str) -> dict[str, int]:
        """Products this run saw, created and changed: exact, from the database."""
        products = self.db[PRODUCTS]
        seen = await products.count_documents({"last_crawl_id": crawl_id})
        new = await products.count_documents({"first_crawl_id": crawl_id})
        changed = await self.db[HISTORY].count_documents({"crawl_id": crawl_id})
        return {"products_seen": seen, "new": new, "updated": seen - new, "changed": changed}

