"""What a crawl could not read, kept beside the crawl rather than in the spider.

The extension gathers the ``Loss`` records (``frontier.completeness``) of one process: those
the frontier puts in each ``Decision`` (the spider hands every decision it applies here), a
page given up on (the ``page_failed`` signal), and, when the crawl stops before its end (a
budget, a 439, Ctrl-C), every query it left with pages to fetch. It keeps them in
``frontier.completeness.Losses``, where the run recorder (``storage.runs``) reads them for
``crawl_runs.complete`` and ``crawl_runs.incomplete``; a cluster worker reports them with its
progress (the ``worker_snapshot`` signal), so the finaliser records every worker's.

Every loss also marks its category incomplete for coverage: a category not read whole cannot
tell which of its products are gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from pymongo.errors import PyMongoError
from scrapy import signals
from scrapy.exceptions import DontCloseSpider

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.crawl import crawl_id
from tmapi_crawler.frontier.completeness import PAGES_GIVEN_UP, STOPPED, Loss, Losses, loss_to_dict
from tmapi_crawler.frontier.context import (
    CALLS_META,
    META_KEY,
    REPLAYED_META,
    SPOOLED_CALLS_META,
    PageContext,
)
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.storage.cost import count_page
from tmapi_crawler.storage.coverage import mark_incomplete
from tmapi_crawler.storage.ledger import LOST, STORED, Ledger, ledger_document, planned_key
from tmapi_crawler.storage.ledger import now as ledger_now
from tmapi_crawler.storage.store import ProductStore
from tmapi_crawler.transport.middleware import NOT_SENT

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.frontier.decisions import Decision
    from tmapi_crawler.frontier.replay import Replay
    from tmapi_crawler.items import ProductPage

logger = logging.getLogger(__name__)

_ACCOUNTS: WeakKeyDictionary[Crawler, Completeness] = WeakKeyDictionary()


class Completeness:
    """The extension: feeds this process's losses (``frontier.completeness.Losses``), counts
    them and marks their categories incomplete."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.store = Losses.of(crawler)

    @classmethod
    def of(cls, crawler: Crawler) -> Completeness:
        account = _ACCOUNTS.get(crawler)
        if account is None:
            account = _ACCOUNTS[crawler] = cls(crawler)
            crawler.signals.connect(account.page_failed, signal=tmapi_signals.page_failed)
            crawler.signals.connect(account.worker_snapshot,
                                    signal=tmapi_signals.worker_snapshot)
        return account

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Completeness:
        return cls.of(crawler)

    def apply(self, decision: Decision) -> None:
        """What a decision of the frontier says was lost, and which queries it opened or
        finished."""
        self.store.track(decision.follow, decision.done)
        self.add(decision.losses)

    def add(self, losses: Iterable[Loss]) -> None:
        stats = self.crawler.stats
        for loss in losses:
            self.store.add([loss])
            stats.inc_value(stats_keys.completeness_loss(loss.reason))
            mark_incomplete(stats, loss.cat_id)

    def page_failed(self, request: Request, reason: str) -> None:
        """A page given up on; one the stop kept from being sent is the stop's loss."""
        if META_KEY not in request.meta:
            return
        context = PageContext.from_dict(request.meta[META_KEY])
        self.add([Loss(context.query.cat_id, STOPPED if reason == NOT_SENT else PAGES_GIVEN_UP,
                       context.query.key())])

    def worker_snapshot(self) -> dict[str, Any]:
        """A cluster worker's losses so far, which the finaliser records with every other
        worker's (``distributed.status.read_totals``)."""
        return {"losses": [loss_to_dict(loss) for loss in self.losses()]}

    def losses(self, finish_reason: str | None = None) -> list[Loss]:
        return self.store.losses(finish_reason)


# The page accounting: what a page cost, its ledger entry, what the frontier learned, kept
# out of the spider, which only reads answers and queues what the frontier asks for.


class PageAccounting:
    """The extension: on the page signals (``tmapi_crawler.signals``) it counts each page and
    its cost (``storage.cost``), writes the ledger document of an empty page and of a page given
    up on (a page with products carries its own to the writer), counts and logs each decision
    of the frontier and marks the categories it says were not read whole; it tells the
    frontier of a duplicate the scheduler dropped (the copy is fetched, this one never will),
    and reports a resume.

    A signal extension rather than a spider middleware (as Scrapy's ``depth.py``): the spider
    yields no follow-ups to look at, it queues them before a page is said parsed or failed.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._dropped: set[asyncio.Future[Decision]] = set()
        #: A resume's known pages left to fetch when it started (None: not a resume).
        self._left_at_resume: int | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PageAccounting:
        accounting = cls(crawler)
        connect = crawler.signals.connect
        connect(accounting.frontier_decided, signal=tmapi_signals.frontier_decided)
        connect(accounting.page_answered, signal=tmapi_signals.page_answered)
        connect(accounting.page_given_up, signal=tmapi_signals.page_given_up)
        connect(accounting.crawl_resumed, signal=tmapi_signals.crawl_resumed)
        connect(accounting.request_dropped, signal=signals.request_dropped)
        connect(accounting.spider_idle, signal=signals.spider_idle)
        connect(accounting.spider_closed, signal=signals.spider_closed)
        return accounting

    def frontier_decided(self, decision: Decision) -> None:
        """Count and log what the frontier learned; hand its losses to ``Completeness``."""
        stats = self.crawler.stats
        Completeness.of(self.crawler).apply(decision)
        for key, amount in decision.counters.items():
            if amount:
                stats.inc_value(key, amount)
        for note in decision.notes:
            logger.log(note.level, note.message)
            if note.cat_id is not None:
                mark_incomplete(stats, note.cat_id)
        if decision.cap is not None:
            stats.set_value(stats_keys.SPLIT_DETECTED_CAP, decision.cap)

    async def page_answered(self, request: Request, summary: PageSummary, decision: Decision,
                            page: ProductPage) -> None:
        stats = self.crawler.stats
        stats.inc_value(stats_keys.PAGES)
        stats.inc_value(stats_keys.ITEMS, len(page.products))
        if not page.products:
            stats.inc_value(stats_keys.PAGES_EMPTY)
        context = PageContext.from_dict(request.meta[META_KEY])
        calls = request.meta.get(CALLS_META, 1)
        count_page(stats, context, calls, ok=True, probe=self._probe(),
                   read_again=bool(decision.counters[stats_keys.SPLIT_EXTRA_REQUESTS]))
        store = ProductStore.of(self.crawler)
        if not store.opened:
            return
        # An answer from the spool: the calls an interrupted run paid for it.
        paid = calls + request.meta.get(SPOOLED_CALLS_META, 0)
        document = self._document(context, summary, paid, STORED)
        if page.products:
            page.ledger = document  # written with the page's products
        else:
            await self._record(store, document)

    async def page_given_up(self, request: Request, reason: str) -> None:
        """Counted by reason (the transport already logged why); its calls are the failures'
        cost, kept in the ledger. Its loss is ``Completeness``'s (``page_failed``)."""
        stats = self.crawler.stats
        stats.inc_value(stats_keys.failed_by_reason(reason))
        context = PageContext.from_dict(request.meta[META_KEY])
        calls = request.meta.get(CALLS_META, 0)
        count_page(stats, context, calls, ok=False, probe=self._probe())
        store = ProductStore.of(self.crawler)
        if store.opened and reason != NOT_SENT and calls:
            await self._record(store, self._document(context, PageSummary(0), calls, LOST))

    def _probe(self) -> bool:
        """Every call of a probe is a probe's (``storage.cost``)."""
        return bool(getattr(self.crawler.spider, "probe", False))

    def _document(self, context: PageContext, summary: PageSummary, calls: int,
                  state: str) -> dict[str, Any]:
        return ledger_document(crawl_id(self.crawler), context, summary, calls,
                               ledger_now(), state=state,
                               planned=planned_key(context, self.crawler.spider.plan.queries))

    async def _record(self, store: ProductStore, document: dict[str, Any]) -> None:
        """A page with no products to wait for goes to the ledger at once."""
        try:
            await Ledger.of(self.crawler).record(store, [document])
        except PyMongoError as exc:  # the page is fetched again by a resume: nothing lost
            logger.warning("Could not record page %s in the resume ledger: %s",
                           document["key"], exc)

    def request_dropped(self, request: Request) -> None:
        """A duplicate the scheduler dropped will never be fetched (its copy will): the
        frontier counts its page resolved, which may finish its query."""
        frontier = getattr(self.crawler.spider, "frontier", None)  # built when it starts
        if frontier is None or META_KEY not in request.meta or request.meta.get(REPLAYED_META):
            return
        context = PageContext.from_dict(request.meta[META_KEY])
        dropped = asyncio.ensure_future(frontier.on_dropped(context))
        self._dropped.add(dropped)
        dropped.add_done_callback(self._settle_dropped)

    def _settle_dropped(self, dropped: asyncio.Future[Decision]) -> None:
        self._dropped.discard(dropped)
        self.crawler.spider.follow(dropped.result())

    def spider_idle(self) -> None:
        """Not idle while a dropped page is being accounted for."""
        if self._dropped:
            raise DontCloseSpider

    def crawl_resumed(self, crawl_id: str, replay: Replay) -> None:
        stats = self.crawler.stats
        stats.inc_value(stats_keys.RESUME_PAGES_HELD, replay.held)
        stats.inc_value(stats_keys.RESUME_CALLS_SAVED, replay.saved)
        # Left: every page known now and not held, not only the window asked for at once.
        self._left_at_resume = max(
            stats.get_value(stats_keys.PAGES_KNOWN, 0) - replay.held, len(replay.left))
        logger.info("Resuming crawl %s: %d pages already held (replayed free, %d calls "
                    "saved), %d pages left to fetch as far as is known", crawl_id,
                    replay.held, replay.saved, self._left_at_resume)

    def spider_closed(self) -> None:
        """A resume that fetched more than it said was left says why: the pages it learned
        of on the way (splits, pages past what a total said)."""
        if self._left_at_resume is None:
            return
        stats = self.crawler.stats
        fetched = (stats.get_value(stats_keys.PAGES, 0)
                   + stats.get_value(stats_keys.PAGES_FAILED, 0))
        if fetched > self._left_at_resume:
            logger.info("The resume fetched %d pages, %d more than the %d left at its start: "
                        "pages found on the way (splits, pages past what a total said)",
                        fetched, fetched - self._left_at_resume, self._left_at_resume)
