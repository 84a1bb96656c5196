"""The MongoDB item pipeline: batched upserts, a record of every run, nothing lost on close.

Items are buffered and written with one unordered ``bulk_write`` per batch, so the crawl never
waits on the database item by item; a full buffer makes ``process_item`` wait for its flush,
which is the back-pressure that keeps memory bounded while MongoDB is slow or restarting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure
from scrapy import signals
from scrapy.exceptions import CloseSpider

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import MONGODB_UNAVAILABLE, close_spider
from tmapi_crawler.items import ProductItem, ProductPage
from tmapi_crawler.storage import embedded as embedded_mongo
from tmapi_crawler.storage.coverage import complete_categories, mark_incomplete
from tmapi_crawler.storage.store import (
    ProductStore,
    StorageUnavailable,
    batch_now,
    rejected_document,
    updates_by_id,
)

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

def new_crawl_id() -> str:
    """Sortable by start time, unique across workers started in the same second."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class MongoPipeline:
    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.uri: str = settings.get("MONGO_URI") or ""
        self.database: str = settings.get("MONGO_DATABASE") or "tmapi"
        self.embedded_dir = Path(settings.get("MONGO_EMBEDDED_DIR") or ".data/mongodb")
        self.spill_dir = Path(settings.get("MONGO_SPILL_DIR") or ".data/unsaved")
        self.batch_size = settings.getint("MONGO_BATCH_SIZE")
        self.flush_interval = settings.getfloat("MONGO_FLUSH_INTERVAL")
        self.retry_timeout = settings.getfloat("MONGO_RETRY_TIMEOUT")
        self.crawl_id = new_crawl_id()
        #: Set when a distributed scheduler shares its crawl: this process is one of its workers.
        self.worker_id: str | None = None
        self.store: ProductStore | None = None
        self.pages: list[ProductPage] = []
        self.pending: list[ProductItem] = []
        self.rejected: list[ProductItem] = []
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._failed = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MongoPipeline:
        pipeline = cls(crawler)
        crawler.signals.connect(pipeline.spider_closed, signal=signals.spider_closed)
        return pipeline

    async def open_spider(self) -> None:
        """Connect before the first request: an unreachable database wastes no API call."""
        if not self.uri:
            # Left running at the end: other crawls may share it, and queries want it next
            # (`scrapy mongo stop` stops it).
            embedded = await asyncio.to_thread(embedded_mongo.ensure_running, self.embedded_dir)
            self.uri = embedded.uri
        self.store = ProductStore(self.uri, self.database, self.retry_timeout)
        try:
            await self.store.open()
        except StorageUnavailable as exc:
            logger.error("%s; nothing was sent to the API", exc)
            await self.store.close()
            self.store = None
            raise CloseSpider(MONGODB_UNAVAILABLE) from None
        scheduler = self.crawler.engine.scheduler
        self.crawl_id = getattr(scheduler, "crawl_id", None) or self.crawl_id
        self.worker_id = getattr(scheduler, "worker_id", None)
        self.stats.set_value(stats_keys.CRAWL_ID, self.crawl_id)
        spider = self.crawler.spider
        await self.store.start_run({
            "_id": self.crawl_id,
            "spider": spider.name if spider else None,
            "arguments": getattr(spider, "arguments", {}),
            "queries": [q.to_dict() for q in getattr(getattr(spider, "plan", None), "queries", ())],
            "settings": {
                "TMAPI_BASE_URL": self.crawler.settings.get("TMAPI_BASE_URL"),
                "TMAPI_CONCURRENCY": self.crawler.settings.getint("TMAPI_CONCURRENCY"),
                "TMAPI_RESULT_CAP": self.crawler.settings.getint("TMAPI_RESULT_CAP"),
            },
            "host": socket.gethostname(),
            "database": self.database,
            "started_at": datetime.now(UTC),
            "status": "running",
        }, worker_id=self.worker_id)
        logger.info("Storing into MongoDB database %r as crawl %s", self.database, self.crawl_id)
        self._ticker = asyncio.ensure_future(self._tick())

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, ProductPage):
            return item
        self.pages.append(item)
        for product in item.products:
            if product.rejection is None:
                self.pending.append(product)
            else:
                self._reject(product)
        if len(self.pending) + len(self.rejected) >= self.batch_size:
            await self.flush()
        return item

    def _reject(self, product: ProductItem) -> None:
        self.rejected.append(product)
        self.stats.inc_value(stats_keys.ITEMS_REJECTED)
        if product.item_id is None:
            # Any stored product of the category might be this one: none may be called gone.
            mark_incomplete(self.stats, product.context.cat_id)
        logger.warning("Rejected item %s (cat_id=%s page=%s position=%s): %s",
                       product.item_id, product.context.cat_id, product.context.page,
                       product.context.position, product.rejection)

    async def flush(self) -> None:
        """Write what is buffered; one flush at a time, while new items keep arriving."""
        async with self._lock:
            pages, self.pages = self.pages, []
            items, self.pending = self.pending, []
            rejected, self.rejected = self.rejected, []
            if self._failed or self.store is None or not (items or rejected):
                self._spill(items + rejected)
                return
            now = batch_now()
            try:
                result = await self.store.write_products(
                    updates_by_id(items, self.crawl_id, now), self.crawl_id, now
                )
                await self.store.write_rejected(
                    [rejected_document(i, self.crawl_id, now) for i in rejected]
                )
            except StorageUnavailable as exc:
                self._failed = True
                logger.error("%s; stopping the crawl", exc)
                self._spill(items + rejected)
                close_spider(self.crawler, MONGODB_UNAVAILABLE)
                return
            self.crawler.signals.send_catch_log(tmapi_signals.items_stored, items=pages)
            self.stats.inc_value(stats_keys.DB_BATCHES)
            self.stats.inc_value(stats_keys.DB_SIGHTINGS, len(items))
            self.stats.inc_value(stats_keys.DB_CREATED, result.created)
            if result.changed:
                self.stats.inc_value(stats_keys.DB_CHANGED, result.changed)
            if result.refused:
                self.stats.inc_value(stats_keys.DB_REFUSED, result.refused)

    async def close_spider(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.flush()

    async def spider_closed(self, reason: str) -> None:
        """Record how the run ended; the stats are final only once the spider closed."""
        if self.store is None:
            return
        try:
            vanished = await self._mark_vanished(reason)
            counts = {**await self.store.run_counts(self.crawl_id), "vanished": vanished}
            stats = self.stats.get_stats()
            await self.store.finish_run(self.crawl_id, {
                "status": "closed",
                "finished_at": datetime.now(UTC),
                "finish_reason": reason,
                "counts": {
                    "pages": stats.get(stats_keys.PAGES, 0),
                    "items": stats.get(stats_keys.ITEMS, 0),
                    "rejected": stats.get(stats_keys.ITEMS_REJECTED, 0),
                    "failed_pages": stats.get(stats_keys.PAGES_FAILED, 0),
                    **counts,
                },
                "answers": stats_keys.with_prefix(stats, stats_keys.ANSWERS),
            }, worker_id=self.worker_id)
            for name, value in counts.items():
                self.stats.set_value(stats_keys.product_count(name), value)
        except StorageUnavailable as exc:
            logger.error("Could not record the end of crawl %s: %s", self.crawl_id, exc)
        finally:
            await self.store.close()

    async def _mark_vanished(self, reason: str) -> int:
        """Mark products gone from the categories this crawl saw whole (``coverage``).

        Only a crawl that finished can tell; a worker of a distributed crawl sees neither the
        other workers' pages nor their failures, so it never marks.
        """
        if reason != "finished" or self.worker_id is not None or self.store is None:
            return 0
        plan = getattr(self.crawler.spider, "plan", None)
        categories = complete_categories(getattr(plan, "queries", ()), self.stats.get_stats())
        if not categories:
            return 0
        try:
            marked = await self.store.mark_vanished(self.crawl_id, categories, batch_now())
        except OperationFailure as exc:  # e.g. a MongoDB older than 5.2 ($sortArray)
            logger.error("Could not mark the products gone from categories %s: %s",
                         ", ".join(map(str, categories)), exc)
            return 0
        logger.info("Crawled completely: categories %s; %d listings gone since earlier crawls "
                    "marked vanished", ", ".join(map(str, categories)), marked)
        return marked

    async def _tick(self) -> None:
        """Flush at least every ``MONGO_FLUSH_INTERVAL`` seconds, so a slow crawl still lands."""
        while True:
            await asyncio.sleep(self.flush_interval)
            # Shielded: cancelling the ticker at close must not abort a batch halfway, with its
            # items already taken from the buffer and never stored.
            await asyncio.shield(self.flush())

    def _spill(self, items: list[ProductItem]) -> None:
        """Keep what could not be stored in a file, and say where: never drop it silently."""
        if not items:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{self.crawl_id}.jsonl"
        with path.open("a", encoding="utf-8") as spill:
            for item in items:
                spill.write(json.dumps(asdict(item), default=str, ensure_ascii=False) + "\n")
        self.stats.inc_value(stats_keys.ITEMS_SPILLED, len(items))
        logger.error("%d items could not be stored in MongoDB; kept in %s", len(items), path)
