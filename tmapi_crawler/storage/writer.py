"""The batching writer: the item pipeline that stores products in MongoDB, losing none.

Items are buffered and written with one unordered ``bulk_write`` per batch, so the crawl never
waits on the database item by item; a full buffer makes ``process_item`` wait for its flush,
which is the back-pressure that keeps memory bounded while MongoDB is slow or restarting.

Nothing parsed is dropped without a trace:

* an item normalisation refused, or a product MongoDB refused, goes to ``rejected_items`` —
  one at a time, the rest of its batch is stored;
* when MongoDB stays unreachable (``MONGO_RETRY_TIMEOUT``), the batch goes to a JSON-lines file
  in ``MONGO_SPILL_DIR`` and the crawl stops (``mongodb_unavailable``);
* a flush that fails for any other reason keeps its batch in that file too, says so, and
  flushing goes on;
* on a forced stop (a second Ctrl-C) whatever is buffered or being written is stored within
  ``TMAPI_FORCED_STOP_TIMEOUT``, or kept in that file.

The record of the run (``crawl_runs``) is the ``storage.runs`` extension's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from scrapy.exceptions import CloseSpider

from tmapi_crawler import crawl
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import MONGODB_UNAVAILABLE, close_spider
from tmapi_crawler.folders import private_dir
from tmapi_crawler.items import ProductItem, ProductPage
from tmapi_crawler.normalize import rendered
from tmapi_crawler.quoting import shown
from tmapi_crawler.storage.connection import StorageUnavailable
from tmapi_crawler.storage.coverage import mark_incomplete
from tmapi_crawler.storage.documents import batch_now, rejected_document, updates_by_id
from tmapi_crawler.storage.ledger import Ledger, plan_fingerprint
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.storage.store import ProductStore

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    """Pages taken from the buffer together, their products sorted for writing."""

    pages: list[ProductPage] = field(default_factory=list)
    items: list[ProductItem] = field(default_factory=list)
    rejected: list[ProductItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items) + len(self.rejected)

    def extend(self, other: _Batch) -> None:
        self.pages += other.pages
        self.items += other.items
        self.rejected += other.rejected


def _spilled(item: ProductItem) -> str:
    """One JSON line; an item too deep for JSON keeps a bounded rendering of what it held."""
    try:
        return json.dumps(asdict(item), default=str, ensure_ascii=False)
    except (RecursionError, ValueError):
        return json.dumps({"context": asdict(item.context), "item_id": item.item_id,
                           "rejection": item.rejection, "raw_text": rendered(item.raw)},
                          ensure_ascii=False)


class MongoPipeline:
    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.store = ProductStore.of(crawler)
        self.ledger = Ledger.of(crawler)
        self.spill_dir = Path(settings["MONGO_SPILL_DIR"])
        self.batch_size = settings.getint("MONGO_BATCH_SIZE")
        self.flush_interval = settings.getfloat("MONGO_FLUSH_INTERVAL")
        self.forced_timeout = settings.getfloat("TMAPI_FORCED_STOP_TIMEOUT")
        self.buffer = _Batch()
        #: The batch a flush is writing now: not stored until that flush says so.
        self._writing: _Batch | None = None
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        #: MongoDB is gone (or the crawl was forced to stop): whatever comes is spilled.
        self._spilling = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MongoPipeline:
        pipeline = cls(crawler)
        crawler.signals.connect(pipeline.forced_stop, signal=tmapi_signals.forced_stop)
        return pipeline

    async def open_spider(self) -> None:
        """Connect before the first request: an unreachable database wastes no API call."""
        try:
            await self.store.open()
        except StorageUnavailable as exc:
            logger.error("%s; nothing was sent to the API", exc)
            raise CloseSpider(MONGODB_UNAVAILABLE) from None
        resumed = await self._resume()
        # Known (and in the stats) before the spider opens: progress snapshots carry it.
        crawl_id = crawl.crawl_id(self.crawler)
        await Spool.of(self.crawler).open(
            self.store.db, crawl_id, resumed=resumed,
            distributed=self.crawler.settings.getbool("TMAPI_DISTRIBUTED"))
        self._ticker = asyncio.ensure_future(self._tick())

    async def _resume(self) -> bool:
        """Find the interrupted crawl of the same plan (``storage.ledger``) and continue it.

        A distributed crawl's id is the cluster's; ``scrapy seed`` decides its resumes.
        """
        spider = self.crawler.spider
        plan = getattr(spider, "plan", None)
        distributed = self.crawler.settings.getbool("TMAPI_DISTRIBUTED")
        fresh = distributed or plan is None or not plan.queries or getattr(spider, "fresh", True)
        try:
            resume = await self.ledger.open(
                self.store, plan_fingerprint(plan, self.crawler.settings) if plan else "",
                spider.name if spider else "", fresh=fresh)
        except PyMongoError as exc:
            logger.error("%s; nothing was sent to the API", shown(str(exc)))
            raise CloseSpider(MONGODB_UNAVAILABLE) from None
        if resume is None:
            return False
        crawl.resume_crawl(self.crawler, resume.crawl_id)
        return True

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, ProductPage):
            return item
        page = _Batch([item])
        for product in item.products:
            if product.rejection is None:
                page.items.append(product)
            else:
                self._count_rejected(product, product.rejection)
                page.rejected.append(product)
        if self._spilling:
            self._spill(page)
            return item
        self.buffer.extend(page)
        if len(self.buffer) >= self.batch_size or not self._lock.locked():
            await self.flush()
        return item

    def _count_rejected(self, product: ProductItem, reason: str) -> None:
        self.stats.inc_value(stats_keys.ITEMS_REJECTED)
        if product.item_id is None:
            # Any stored product of the category might be this one: none may be called gone.
            mark_incomplete(self.stats, product.context.cat_id)
        logger.warning("Rejected item %s (cat_id=%s page=%s position=%s): %s",
                       product.item_id, product.context.cat_id, product.context.page,
                       product.context.position, reason)

    def _take(self) -> _Batch:
        batch, self.buffer = self.buffer, _Batch()
        return batch

    async def flush(self) -> None:
        """Write what is buffered, and what arrived meanwhile; one flush at a time.

        A page is written as soon as no write is under way (what arrives during one is
        written right after it, in one batch): a page parsed is a page paid for, and only a
        stored page is spared by a resume after a kill (issue 11: pages paid twice stay
        within the requests in flight). Under load, batches grow by themselves.
        """
        async with self._lock:
            while batch := self._take():
                self._writing = batch
                await self._write(batch)
                # Cleared only once written or spilled: a forced stop spills what a cancelled
                # flush was still writing.
                self._writing = None

    async def _write(self, batch: _Batch) -> None:
        """Store a batch, or keep it in the spill file; never lose it, never raise."""
        if self._spilling:
            self._spill(batch)
            return
        try:
            await self._store(batch)
        except (StorageUnavailable, PyMongoError) as exc:
            self._spilling = True
            logger.error("%s; stopping the crawl", shown(str(exc)))
            self._spill(batch)
            close_spider(self.crawler, MONGODB_UNAVAILABLE)
        except Exception:
            self.stats.inc_value(stats_keys.DB_FLUSH_ERRORS)
            logger.exception("Storing a batch of %d products failed", len(batch))
            self._spill(batch)

    async def _store(self, batch: _Batch) -> None:
        """Write a batch's products, then its rejected items (with those MongoDB refused)."""
        crawl_id = crawl.crawl_id(self.crawler)
        now = batch_now()
        refused: dict[int, str] = {}
        if batch.items:
            result = await self.store.write_products(
                updates_by_id(batch.items, crawl_id, now), crawl_id, now
            )
            refused = result.refused
            self.stats.inc_value(stats_keys.DB_BATCHES)
            self.stats.inc_value(stats_keys.DB_CREATED, result.created)
            if result.changed:
                self.stats.inc_value(stats_keys.DB_CHANGED, result.changed)
        documents = [rejected_document(i, crawl_id, now) for i in batch.rejected]
        stored = len(batch.items)
        for item in batch.items:
            if item.item_id in refused:
                reason = f"MongoDB refused it: {refused[item.item_id]}"
                self._count_rejected(item, reason)
                self.stats.inc_value(stats_keys.DB_REFUSED)
                documents.append(rejected_document(item, crawl_id, now, reason))
                stored -= 1
        self.stats.inc_value(stats_keys.DB_SIGHTINGS, stored)
        unstored = await self.store.write_rejected(documents)
        lost = _Batch()
        if unstored:
            keep = {id(d) for d in unstored}
            lost.rejected = [item for item, document in zip(
                batch.rejected + [i for i in batch.items if i.item_id in refused],
                documents, strict=True) if id(document) in keep]
            self._spill(lost)
        lost_ids = {id(item) for item in lost.rejected}
        settled = [page for page in batch.pages
                   if not any(id(product) in lost_ids for product in page.products)]
        await self._record_pages(settled)
        self.crawler.signals.send_catch_log(tmapi_signals.items_stored, items=settled)

    async def _record_pages(self, pages: list[ProductPage]) -> None:
        """The resume ledger: these pages' products are stored, so they need no call again."""
        documents = [page.ledger for page in pages if page.ledger is not None]
        if not documents:
            return
        try:
            await self.ledger.record(self.store, documents)
        except PyMongoError as exc:  # the products are stored; a resume pays for them again
            logger.warning("Could not record %d pages in the resume ledger: %s",
                           len(documents), exc)

    async def close_spider(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.flush()

    async def forced_stop(self) -> None:
        """A second Ctrl-C: store what is buffered now (after a flush in progress), within
        ``TMAPI_FORCED_STOP_TIMEOUT``; whatever is not stored by then goes to the spill file."""
        if self._ticker is not None:
            self._ticker.cancel()
        try:
            async with asyncio.timeout(self.forced_timeout):
                await self.flush()
        except TimeoutError:
            logger.error("Forced stop: MongoDB did not take the last products within %.0f s",
                         self.forced_timeout)
        unsaved = self._writing or _Batch()
        self._writing = None
        unsaved.extend(self._take())
        self._spilling = True
        self._spill(unsaved)

    async def _tick(self) -> None:
        """Flush at least every ``MONGO_FLUSH_INTERVAL`` seconds, so a slow crawl still lands."""
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                # Shielded: cancelling the ticker at close must not abort a batch halfway,
                # with its items already taken from the buffer and never stored.
                await asyncio.shield(self.flush())
            except asyncio.CancelledError:
                raise
            except Exception:  # flush() keeps its batch; this only keeps the ticker alive
                logger.exception("Periodic flush failed; flushing goes on")

    def _spill(self, batch: _Batch) -> None:
        """Keep what could not be stored in a file, and say where: never drop it silently."""
        items = batch.items + batch.rejected
        if not items:
            return
        private_dir(self.spill_dir)
        path = self.spill_dir / f"{crawl.crawl_id(self.crawler)}.jsonl"
        # Text that is not valid Unicode is written as its JSON escape, \ud800: still JSON.
        with path.open("a", encoding="utf-8", errors="backslashreplace") as spill:
            for item in items:
                spill.write(_spilled(item) + "\n")
        self.stats.inc_value(stats_keys.ITEMS_SPILLED, len(items))
        logger.error("%d items could not be stored in MongoDB; kept in %s", len(items), path)
