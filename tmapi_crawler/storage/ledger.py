"""The resume ledger: which pages of a crawl are paid for and stored, kept in MongoDB.

One document per page in ``crawl_pages`` (``docs/reference/collections.md``), written right
after the page's products landed, in the writer's same flush (an empty page, which has no
products, as soon as it is parsed) — never at close — so the ledger survives a SIGKILL or a
power loss as well as the products do. A page given up on is recorded too (``lost``), for the
cost and the losses; a resume fetches it again.

Running the same command again (same plan fingerprint, same database) after any interruption
continues the interrupted crawl under the same crawl id: the frontier is replayed over
the pages held here (free), and only what the replay asks for that is not held is fetched. A new
crawl of the plan starts only once the last one finished, or with ``-a fresh=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from tmapi_crawler import api
from tmapi_crawler.closing import FINISHED
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.replay import HeldPage
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.per_crawler import PerCrawler
from tmapi_crawler.plan import Plan, PlanError, Query
from tmapi_crawler.storage.collections import CRAWL_RUNS, LEDGER
from tmapi_crawler.storage.spool import Spool

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

    from tmapi_crawler.storage.connection import Connection

logger = logging.getLogger(__name__)

#: ``crawl_pages.state``: the page's products are stored; the page was given up on.
STORED, LOST = "stored", "lost"
#: The spider argument that starts a new crawl even when the last one was interrupted.
FRESH_ARGUMENT: Final = "fresh"
#: Settings that change what a plan fetches, so they are part of its fingerprint.
FINGERPRINT_SETTINGS: Final = ("TMAPI_BASE_URL", "TMAPI_RESULT_CAP")
LEDGER_INDEXES: Final = [
    # The resume's and the estimate's reads: a crawl's pages in the order they were stored.
    IndexModel([("crawl_id", ASCENDING), ("seq", ASCENDING)], name="crawl_seq"),
    IndexModel([("crawl_id", ASCENDING), ("key", ASCENDING)], name="page", unique=True),
    IndexModel([("cat_id", ASCENDING), ("at", DESCENDING)], name="category"),
    IndexModel([("planned", ASCENDING), ("crawl_id", ASCENDING)], name="estimate"),
]

_LEDGERS: PerCrawler[Ledger] = PerCrawler()


def fresh_requested(arguments: Mapping[str, Any]) -> bool:
    """``-a fresh=true|false``; anything else is refused like any bad argument."""
    value = str(arguments.get(FRESH_ARGUMENT, "false")).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise PlanError(f"{FRESH_ARGUMENT}: {arguments[FRESH_ARGUMENT]!r} is not true or false")
    return value in ("true", "1", "yes")


def _within(query: Query, planned: Query) -> bool:
    """Whether ``query`` (a page's, maybe split by price, cut into a flag cell or read under
    another sort) can descend from ``planned``: a flag the planned query leaves open may be
    set either way by a cell of it."""
    if (query.cat_id, query.language, query.page_size) != (
            planned.cat_id, planned.language, planned.page_size):
        return False
    if any(getattr(planned, name) is not None and getattr(query, name) != getattr(planned, name)
           for name in api.FLAG_FILTERS):
        return False
    low, high = planned.price_start, planned.price_end
    start, end = query.price_start, query.price_end
    if low is not None and (start is None or Decimal(start) < Decimal(low)):
        return False
    return high is None or (end is not None and Decimal(end) <= Decimal(high))


def _distance(query: Query, planned: Query) -> tuple[bool, int]:
    """How far ``query`` strays from ``planned``: another sort, then flags set by a cell."""
    return (query.sort != planned.sort,
            sum(getattr(query, name) != getattr(planned, name) for name in api.FLAG_FILTERS))


def planned_key(context: PageContext, planned: Iterable[Query]) -> str:
    """The key of the planned query a page descends from (the closest one: its own sort and
    flags first): what the estimate sums calls by, so a split query's walks, flag cells and
    sort cells count toward the query the user planned."""
    candidates = [q for q in planned if _within(context.query, q)]
    if not candidates:
        return context.query.key()
    return min(candidates, key=lambda q: _distance(context.query, q)).key()


def plan_fingerprint(plan: Plan, settings: BaseSettings) -> str:
    """The planned queries, ``max_pages`` and the settings that change what is fetched."""
    data = {
        "queries": [q.to_dict() for q in plan.queries],
        "max_pages": plan.max_pages,
        "settings": {name: str(settings.get(name)) for name in FINGERPRINT_SETTINGS},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(slots=True)
class Resume:
    """What a resumed crawl holds already: pages by key, in the order they were stored."""

    crawl_id: str
    pages: dict[str, HeldPage] = field(default_factory=dict)
    #: Paid calls the interrupted runs spent (stored pages and pages given up on).
    calls: int = 0


def ledger_document(crawl_id: str, context: PageContext, summary: PageSummary, calls: int,
                    now: datetime, *, planned: str, state: str = STORED) -> dict[str, Any]:
    return {
        "crawl_id": crawl_id,
        "planned": planned,
        "key": context.key,
        "cat_id": context.query.cat_id,
        "state": state,
        "context": context.to_dict(),
        "summary": summary.to_dict(),
        "calls": calls,
        "at": now,
    }


class Ledger:
    """One crawl's ledger, shared by the writer and the page accounting (records) and the spider
    (the pages it replays, ``frontier.replay``)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.resume: Resume | None = None
        self._seq = 0

    @classmethod
    def of(cls, crawler: Crawler) -> Ledger:
        return _LEDGERS.made(crawler, lambda: cls(crawler))

    async def open(self, store: Connection, fingerprint: str, spider: str, *,
                   fresh: bool) -> Resume | None:
        """Make the indexes; find the interrupted crawl of this plan to resume, if any."""
        pages = store.db[LEDGER]
        await pages.create_indexes(LEDGER_INDEXES)  # one round trip: start-up (B12)
        if fresh:
            return None
        last = await store.db[CRAWL_RUNS].find_one(
            {"plan_fingerprint": fingerprint, "spider": spider},
            sort=[("started_at", DESCENDING)])
        if last is None or last.get("finish_reason") == FINISHED:
            return None
        resume = Resume(last["_id"])
        async for doc in pages.find({"crawl_id": resume.crawl_id}).sort("seq", ASCENDING):
            resume.calls += int(doc.get("calls", 0))
            self._seq = max(self._seq, int(doc.get("seq", 0)))
            if doc["state"] == STORED:
                resume.pages[doc["key"]] = HeldPage(
                    PageContext.from_dict(doc["context"]),
                    PageSummary.from_dict(doc["summary"]), int(doc.get("calls", 0)))
        self.resume = resume
        return resume

    async def record(self, store: Connection, documents: Iterable[dict[str, Any]]) -> None:
        """Upsert pages (a page fetched again replaces its document); ``seq`` orders them.
        Then their answers leave the spool (``storage.spool``): the ledger holds them now."""
        operations = []
        keys = []
        for document in documents:
            self._seq += 1
            operations.append(UpdateOne(
                {"crawl_id": document["crawl_id"], "key": document["key"]},
                {"$set": {**document, "seq": self._seq}}, upsert=True))
            keys.append(document["key"])
        if operations:
            await store.db[LEDGER].bulk_write(operations, ordered=False)
            await Spool.of(self.crawler).drop(keys)


def now() -> datetime:
    return datetime.now(UTC)
