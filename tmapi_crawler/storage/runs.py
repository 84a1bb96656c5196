"""The crawl-run recorder: the extension that owns ``crawl_runs``, vanished marking and counts.

It records a run when the spider opens (only when the writer opened the store: no writer, no
run), and how it ended once the spider closed — after the writer's last flush, so the counts it
takes from the database are final, and products gone from a completely crawled category are
marked then. On a forced stop (a second Ctrl-C) it still records the finish reason, after the
writer saved what was parsed (``signals.crawl_killed``).

How the end is recorded is the finisher's (``TMAPI_RUN_FINISHER``): :class:`RunFinisher` for
one process's crawl; a cluster worker's share is ``distributed.finishing``'s, so nothing here
knows about clusters.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure, PyMongoError
from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.utils.misc import load_object

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED, MONGODB_UNAVAILABLE, PROBED
from tmapi_crawler.crawl import crawl_id
from tmapi_crawler.frontier.completeness import Losses
from tmapi_crawler.storage import completeness
from tmapi_crawler.storage.collections import CRAWL_RUNS
from tmapi_crawler.storage.connection import StorageUnavailable
from tmapi_crawler.storage.cost import cost_of
from tmapi_crawler.storage.coverage import complete_categories, whole_categories
from tmapi_crawler.storage.documents import batch_now
from tmapi_crawler.storage.ledger import Ledger, plan_fingerprint
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.storage.store import ProductStore

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from tmapi_crawler.frontier.completeness import Loss
    from tmapi_crawler.storage.ledger import Resume

logger = logging.getLogger(__name__)

#: ``crawl_runs.status``: still going, closed by Scrapy, or cut short by a forced stop.
RUNNING, CLOSED, KILLED = "running", "closed", "killed"


def run_document(crawl_id_: str, spider: Spider | None, settings: BaseSettings,
                 database: str) -> dict[str, Any]:
    """The ``crawl_runs`` document a run starts with (a cluster crawl's: ``record_seeded``)."""
    plan = getattr(spider, "plan", None)
    return {
        "_id": crawl_id_,
        "spider": spider.name if spider else None,
        "arguments": getattr(spider, "arguments", {}),
        "queries": [q.to_dict() for q in getattr(plan, "queries", ())],
        "settings": {
            "TMAPI_BASE_URL": settings.get("TMAPI_BASE_URL"),
            "TMAPI_CONCURRENCY": settings.getint("TMAPI_CONCURRENCY"),
            "TMAPI_RESULT_CAP": settings.getint("TMAPI_RESULT_CAP"),
        },
        "plan_fingerprint": plan_fingerprint(plan, settings) if plan and plan.queries else None,
        "host": socket.gethostname(),
        "database": database,
        "started_at": datetime.now(UTC),
        "status": RUNNING,
    }


async def record_seeded(store: ProductStore, document: dict[str, Any]) -> None:
    """``scrapy seed`` started a cluster crawl: its document carries the plan's fingerprint
    (argument-less workers have no plan), so a seed after Redis lost the crawl finds it. The
    workers join the document (``ProductStore.start_run``), first or not."""
    shared = {k: v for k, v in document.items()
              if k not in ("_id", "queries", "host", "arguments", "plan_fingerprint")}
    await store.db[CRAWL_RUNS].update_one({"_id": document["_id"]}, {
        "$setOnInsert": shared,
        "$set": {"plan_fingerprint": document["plan_fingerprint"]},
        "$addToSet": {"queries": {"$each": document["queries"]}},
    }, upsert=True)


async def record_resume(store: ProductStore, resume: Resume, *, saved: int = 0,
                        **extra: int) -> None:
    """The run (or the seed) that resumes a crawl is listed under its ``resumes``; ``saved``:
    the calls its replay saved, when no run's stats count them (``scrapy seed``). Each resume
    replays every page held before it, so the latest one's saving counts each page once."""
    await store.db[CRAWL_RUNS].update_one({"_id": resume.crawl_id}, {
        **({"$max": {"cost.saved_by_resume": saved}} if saved else {}),
        "$set": {"status": RUNNING},
        "$unset": {"finish_reason": "", "finished_at": ""},
        "$push": {"resumes": {"started_at": datetime.now(UTC),
                              "host": socket.gethostname(),
                              "pages_held": len(resume.pages),
                              "calls_before": resume.calls, **extra}},
    })


def own_counts(stats: dict[str, Any]) -> dict[str, int]:
    """What this process did, from its stats."""
    return {
        "pages": stats.get(stats_keys.PAGES, 0),
        "items": stats.get(stats_keys.ITEMS, 0),
        "rejected": stats.get(stats_keys.ITEMS_REJECTED, 0),
        "spilled": stats.get(stats_keys.ITEMS_SPILLED, 0),
        "failed_pages": stats.get(stats_keys.PAGES_FAILED, 0),
    }


async def whole_crawl_counts(store: ProductStore, crawl_id_: str, own: dict[str, int]
                             ) -> dict[str, int]:
    """A resumed crawl's counts are the whole crawl's: this run's added to what its earlier
    runs recorded; this run's share goes under its entry in ``resumes``."""
    run = await store.db[CRAWL_RUNS].find_one({"_id": crawl_id_}, {"counts": 1, "resumes": 1})
    resumes = (run or {}).get("resumes") or []
    if not resumes:
        return own
    before = run.get("counts") or {}
    await store.db[CRAWL_RUNS].update_one(
        {"_id": crawl_id_}, {"$set": {f"resumes.{len(resumes) - 1}.counts": own}})
    return {name: int(before.get(name, 0)) + value for name, value in own.items()}


class RunFinisher:
    """How a run's end is recorded: the crawl of this one process.

    ``TMAPI_RUN_FINISHER`` names the class, so a cluster worker records its share of the
    cluster crawl instead (the distributed profile's ``distributed.finishing.ClusterFinisher``).
    """

    def __init__(self, recorder: CrawlRunRecorder) -> None:
        self.recorder = recorder

    @property
    def worker_id(self) -> str | None:
        """This process's id in a cluster crawl, or None: the crawl is this process's."""
        return None

    @property
    def final(self) -> bool:
        """Whether this process recorded the crawl's end, not only its own share."""
        return True

    async def finish(self, reason: str, status: str) -> None:
        recorder = self.recorder
        crawler, store, crawl_id_ = recorder.crawler, recorder.store, recorder.crawl_id
        record = await recorder.completeness(Losses.of(crawler).losses(reason), reason)
        vanished = await self._mark_vanished(reason, record) if status == CLOSED else 0
        if status == CLOSED and reason == FINISHED:
            await Spool.of(crawler).finish()
        counts = {**await store.run_counts(crawl_id_), "vanished": vanished}
        stats = recorder.stats.get_stats()
        own = await whole_crawl_counts(store, crawl_id_, own_counts(stats))
        await store.finish_run(crawl_id_, {
            "status": status,
            "finished_at": datetime.now(UTC),
            "finish_reason": reason,
            "counts": {**own, **counts},
            "answers": stats_keys.with_prefix(stats, stats_keys.ANSWERS),
            **record,
        })
        recorder.finished = True  # before the cost: a forced stop's timeout must not undo it
        await recorder.record_cost(counts.get("products_seen"))
        for name, value in counts.items():
            recorder.stats.set_value(stats_keys.product_count(name), value)
        # Beside the crawl's products, its sightings over all its runs (a resume's included).
        recorder.stats.set_value(stats_keys.CRAWL_SIGHTINGS, own["items"])

    async def _mark_vanished(self, reason: str, record: dict[str, Any]) -> int:
        """Mark products gone from the categories this crawl saw whole (``coverage``), none
        of those its completeness record names.

        Only a crawl that finished can tell. A distributed crawl is marked once, by its
        finaliser, from every worker's losses (``distributed.finishing``).
        """
        if reason != FINISHED:
            return 0
        recorder = self.recorder
        plan = getattr(recorder.crawler.spider, "plan", None)
        whole = complete_categories(getattr(plan, "queries", ()), recorder.stats.get_stats())
        return await recorder.vanish(
            whole_categories(whole, map(int, record.get("incomplete", ()))))


class CrawlRunRecorder:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.store = ProductStore.of(crawler)
        self.timeout = crawler.settings.getfloat("TMAPI_FORCED_STOP_TIMEOUT")
        self.finisher: RunFinisher = load_object(crawler.settings["TMAPI_RUN_FINISHER"])(self)
        self._started = False
        #: The run's end is recorded (set by the finisher).
        self.finished = False
        #: A forced stop happened: the run is recorded ``killed`` whichever end records it.
        self._killed = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlRunRecorder:
        recorder = cls(crawler)
        crawler.signals.connect(recorder.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(recorder.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(recorder.crawl_killed, signal=tmapi_signals.crawl_killed)
        return recorder

    @property
    def crawl_id(self) -> str:
        return crawl_id(self.crawler)

    async def spider_opened(self) -> None:
        if not self.store.opened:  # no writer, or MongoDB is not there (it said so)
            return
        spider = self.crawler.spider
        settings = self.crawler.settings
        try:
            if await self._resumed():
                self._started = True
                return
            await self.store.start_run(
                run_document(self.crawl_id, spider, settings, self.store.database),
                worker_id=self.finisher.worker_id)
        except (StorageUnavailable, PyMongoError) as exc:
            logger.error("Could not record crawl %s (%s); nothing was sent to the API",
                         self.crawl_id, exc)
            raise CloseSpider(MONGODB_UNAVAILABLE) from None
        self._started = True
        logger.info("Storing into MongoDB database %r as crawl %s", self.store.database,
                    self.crawl_id)

    # Resumes and cost (storage/ledger.py, storage/cost.py).

    async def _resumed(self) -> bool:
        """A resumed crawl keeps its one document: this run is listed under ``resumes``."""
        resume = Ledger.of(self.crawler).resume
        if resume is None:
            return False
        await record_resume(self.store, resume)
        logger.info("Storing into MongoDB database %r, resuming crawl %s", self.store.database,
                    self.crawl_id)
        return True

    async def record_cost(self, products: int | None) -> None:
        """``crawl_runs.cost``: added up over the crawl's runs (resumes) and workers."""
        cost = cost_of(self.stats.get_stats())
        saved = cost.pop("saved_by_resume")
        increments = {f"cost.{name}": value for name, value in cost.items()
                      if isinstance(value, int) and value}
        increments |= {f"cost.by_category.{cat}": n for cat, n in cost["by_category"].items()}
        update: dict[str, Any] = {"$inc": increments} if increments else {}
        if saved:  # each resume replays every page held before it: counted once, not per run
            update["$max"] = {"cost.saved_by_resume": saved}
        if update:
            await self.store.db[CRAWL_RUNS].update_one({"_id": self.crawl_id}, update)
        run = await self.store.db[CRAWL_RUNS].find_one({"_id": self.crawl_id}, {"cost": 1})
        calls = ((run or {}).get("cost") or {}).get("calls", 0)
        if products and calls:
            await self.store.db[CRAWL_RUNS].update_one(
                {"_id": self.crawl_id}, {"$set": {"cost.per_product": round(calls / products, 4)}})

    async def spider_closed(self, reason: str) -> None:
        """Record how the run ended; the writer's last flush is done by now."""
        if not self.store.opened:
            return
        try:
            if self._started and not self.finished:
                await self.finisher.finish(reason, KILLED if self._killed else CLOSED)
                await self.crawler.signals.send_catch_log_async(
                    tmapi_signals.crawl_recorded, crawl_id=self.crawl_id,
                    final=self.finisher.final)
        except (StorageUnavailable, PyMongoError) as exc:
            logger.error("Could not record the end of crawl %s: %s", self.crawl_id, exc)
        finally:
            await self.store.close()

    async def crawl_killed(self, reason: str) -> None:
        """A forced stop: the finish reason still reaches the run record, in bounded time."""
        self._killed = True
        if not self._started or self.finished:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.finisher.finish(reason, KILLED)
        except Exception as exc:  # TimeoutError included
            logger.error("Could not record the end of crawl %s: %s", self.crawl_id,
                         str(exc) or type(exc).__name__)

    async def completeness(self, losses: list[Loss], reason: str) -> dict[str, Any]:
        """``crawl_runs.complete``, ``incomplete`` and ``limited``, also in the stats (the final
        line and the exit status read them). A probe records none: it reads page 1s only."""
        if reason == PROBED:
            return {}
        record = await completeness.record(self.store, self.crawl_id, losses)
        max_pages = getattr(getattr(self.crawler.spider, "plan", None), "max_pages", None)
        if max_pages is not None:
            record["limited"] = {"max_pages": max_pages}
        self.stats.set_value(stats_keys.COMPLETENESS_COMPLETE, record["complete"])
        if record["incomplete"]:
            self.stats.set_value(stats_keys.COMPLETENESS_INCOMPLETE,
                                 completeness.described(record["incomplete"]))
            logger.warning("Crawl %s incomplete: categories %s", self.crawl_id,
                           completeness.described(record["incomplete"]))
        return record

    async def vanish(self, categories: list[int]) -> int:
        """Mark the products gone from ``categories`` since earlier crawls vanished."""
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
