"""The ``category_items`` spider: every product of the requested queries, page by page.

It only wires: an answer's items go out as one ``ProductPage``, its context and summary go to
the frontier (``tmapi_crawler.frontier``), which says which pages to request next and what to
count and log. Which pages, how many at once, and when a query is done are decided there.

The pages a page asks for are handed to the engine (``engine.crawl``) before the page is said
to be parsed or failed (``tmapi_crawler.signals``), not yielded: Scrapy processes a callback's
output in parallel with the callback's own progress, and a cluster worker acknowledges a page
on those signals — a worker dying between the two would lose what the page asked for.

In probe mode (``scrapy estimate --probe``) it fetches page 1 of each planned query and asks
the frontier nothing more; the pages are stored and recorded as any crawl's, and the crawl
closes ``tmapi_probed``, so the next ``scrapy crawl`` of the plan resumes it (``storage.ledger``)
and pays for none of them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from pymongo.errors import PyMongoError
from scrapy import signals
from scrapy.exceptions import CloseSpider, DontCloseSpider
from scrapy.http import TextResponse
from scrapy.utils.misc import build_from_crawler
from twisted.python.failure import Failure

from tmapi_crawler import api, crawl
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.accounting import Completeness
from tmapi_crawler.closing import PROBED
from tmapi_crawler.deprecations import load_class
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.frontier.decisions import Decision, FrontierSettings, priority
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.paging import page_url
from tmapi_crawler.frontier.state import FrontierState, StateLost
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.plan import Plan, plan_from_arguments
from tmapi_crawler.storage.cost import count_page
from tmapi_crawler.storage.coverage import mark_incomplete
from tmapi_crawler.storage.ledger import (
    FRESH_ARGUMENT,
    LOST,
    Ledger,
    fresh_requested,
    ledger_document,
    planned_key,
    replay,
)
from tmapi_crawler.storage.ledger import now as ledger_now
from tmapi_crawler.storage.store import ProductStore
from tmapi_crawler.transport.answers import read_page
from tmapi_crawler.transport.call import ApiError
from tmapi_crawler.transport.middleware import CALLS_META, NOT_SENT, SPOOLED_CALLS_META

logger = logging.getLogger(__name__)

#: ``Request.meta`` key of the pages asked for by a page decided again (``Decision.replayed``):
#: kept in this process only; such a page dropped as a duplicate was asked for already.
REPLAYED_META = "tmapi_replayed"


class CategoryItemsSpider(scrapy.Spider):
    name = "category_items"

    def __init__(self, *, probe: bool = False, **kwargs: Any) -> None:
        arguments = {k: v for k, v in kwargs.items() if k not in ("name", FRESH_ARGUMENT)}
        #: Probe mode, set by ``scrapy estimate --probe`` (never by ``-a``: ``scrapy crawl``
        #: refuses an argument the plan does not know).
        self.probe = probe is True
        #: Probe mode: each planned query's page 1 summary, fetched or held, by page key.
        self.probed: dict[str, PageSummary] = {}
        self.arguments = arguments
        #: ``-a fresh=true``: a new crawl of the plan even if the last one was interrupted.
        self.fresh = fresh_requested(kwargs)
        # None at all: a distributed worker that only crawls what was seeded (commands/crawl.py).
        self.plan: Plan = plan_from_arguments(arguments) if arguments else Plan(queries=())
        self._dropped: set[asyncio.Future[Decision]] = set()
        #: A resume's known pages left to fetch when it started (None: not a resume).
        self._left_at_resume: int | None = None
        super().__init__()

    @staticmethod
    def check_arguments(arguments: dict[str, Any]) -> None:
        """Refuse bad arguments before the crawl opens (see ``commands/crawl.py``)."""
        fresh_requested(arguments)
        plan_from_arguments({k: v for k, v in arguments.items() if k != FRESH_ARGUMENT})

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> CategoryItemsSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.base_url = crawler.settings.get("TMAPI_BASE_URL") or api.DEFAULT_BASE_URL
        return spider

    def build_frontier(self, state: FrontierState | None = None) -> Frontier:
        """Built when the crawl starts (the add-on derives settings after the spider exists),
        on ``TMAPI_FRONTIER_STATE`` unless given a state (``scrapy seed`` gives the cluster's)."""
        settings = self.crawler.settings
        if state is None:
            state = build_from_crawler(load_class(settings, "TMAPI_FRONTIER_STATE"), self.crawler)
        return Frontier(
            FrontierSettings(reach=settings.getint("TMAPI_RESULT_CAP") or None,
                             window=settings.getint("TMAPI_QUERY_WINDOW"),
                             max_pages=self.plan.max_pages),
            state,
        )

    async def start(self) -> AsyncIterator[scrapy.Request]:
        self.frontier = self.build_frontier()
        connect = self.crawler.signals.connect
        connect(self._request_dropped, signal=signals.request_dropped)
        connect(self._keep_open, signal=signals.spider_idle)
        connect(self._report_at_close, signal=signals.spider_closed)
        decision = await self.frontier.plan(self.plan.queries)
        if self.probe:
            for request in self._probe(decision):
                yield request
            return
        if Ledger.of(self.crawler).resume is None:
            for request in self._apply(decision):
                yield request
            return
        for request in await self._replay(decision):
            yield request

    async def _replay(self, decision: Decision) -> list[scrapy.Request]:
        """Resume: replay the frontier over the pages the ledger holds; fetch the rest."""
        resume = Ledger.of(self.crawler).resume
        assert resume is not None
        self._apply(decision)
        replayed = await replay(self.frontier, decision, resume.pages)
        for step in replayed.decisions:
            self._apply(step)
        stats = self.crawler.stats
        stats.inc_value(stats_keys.RESUME_PAGES_HELD, replayed.held)
        stats.inc_value(stats_keys.RESUME_CALLS_SAVED, replayed.saved)
        # Left: every page known now and not held, not only the window asked for at once.
        self._left_at_resume = max(
            stats.get_value(stats_keys.PAGES_KNOWN, 0) - replayed.held, len(replayed.left))
        logger.info("Resuming crawl %s: %d pages already held (replayed free, %d calls "
                    "saved), %d pages left to fetch as far as is known", resume.crawl_id,
                    replayed.held, replayed.saved, self._left_at_resume)
        return [self.page_request(context) for context in replayed.left]

    def _probe(self, planned: Decision) -> list[scrapy.Request]:
        """Probe: page 1 of each planned query the resumed crawl (if any) does not hold, said
        before it is sent; nothing else. The frontier's counts are left to the crawl that
        resumes the probe: it replays these pages."""
        resume = Ledger.of(self.crawler).resume
        held = resume.pages if resume is not None else {}
        left = []
        for context in planned.follow:
            if context.key in held:
                self.probed[context.key] = held[context.key].summary
            else:
                left.append(context)
        self.crawler.signals.connect(self._probe_done, signal=signals.spider_idle)
        self.crawler.signals.send_catch_log(tmapi_signals.probe_planned, calls=len(left),
                                            held=len(planned.follow) - len(left))
        logger.info("Probing: page 1 of %d planned queries (%d held already)", len(left),
                    len(planned.follow) - len(left))
        return [self.page_request(context) for context in left]

    def _probe_done(self) -> None:
        """Every page 1 answered or given up on: the probe ends resumable."""
        raise CloseSpider(PROBED)

    def page_request(self, context: PageContext) -> scrapy.Request:
        """A page's request, built from its context alone, so it can be queued anywhere."""
        return scrapy.Request(
            page_url(self.base_url, context.sent_query, context.page),
            callback=self.parse,
            errback=self.page_failed,
            priority=priority(context),
            meta={META_KEY: context.to_dict()},
        )

    async def parse(self, response: TextResponse) -> AsyncIterator[ProductPage | scrapy.Request]:
        context = PageContext.from_dict(response.meta[META_KEY])
        query = context.query
        filters = query.filters()
        items = [
            ProductItem.from_raw(raw, QueryContext(
                cat_id=query.cat_id, language=query.language, sort=query.sort,
                filters=filters, page=context.page, position=position,
            ))
            for position, raw in enumerate(read_page(response).items)
        ]
        stats = self.crawler.stats
        stats.inc_value(stats_keys.PAGES)
        stats.inc_value(stats_keys.ITEMS, len(items))
        if not items:
            stats.inc_value(stats_keys.PAGES_EMPTY)
        summary = PageSummary.read(response.json()["data"], items)
        calls = response.meta.get(CALLS_META, 1)
        # A shared state that is gone (Redis lost the cluster crawl) decides nothing, but this
        # page is paid for: its products and ledger page are kept, so a resume replays it
        # instead of paying again; it is not said parsed, and the error stops the worker.
        state_lost: StateLost | None = None
        decision = Decision()
        if self.probe:
            self.probed[context.key] = summary
        else:
            try:
                decision = await self.frontier.on_page(context, summary)
            except StateLost as exc:
                state_lost = exc
        count_page(stats, context, calls, ok=True, probe=self.probe,
                   read_again=bool(decision.counters[stats_keys.SPLIT_EXTRA_REQUESTS]))
        self._follow(decision)
        product_page = ProductPage(items)
        store = ProductStore.of(self.crawler)
        if store.opened:
            # An answer from the spool: the calls an interrupted run paid for it.
            paid = calls + response.meta.get(SPOOLED_CALLS_META, 0)
            document = ledger_document(crawl.crawl_id(self.crawler), context, summary,
                                       paid, ledger_now(),
                                       planned=planned_key(context, self.plan.queries))
            if items:
                product_page.ledger = document  # written with the page's products
            else:
                await self._record(store, document)
        if state_lost is None:
            self.crawler.signals.send_catch_log(
                tmapi_signals.page_parsed, request=response.request,
                items=[product_page] if items else [],
            )
        if items:
            yield product_page
        if state_lost is not None:
            raise state_lost

    async def page_failed(self, failure: Failure) -> None:
        """A page given up on is counted by reason (the transport already logged why); its
        query's window moves on. Its loss is the accounting's (``page_failed``)."""
        reason = failure.value.reason if isinstance(failure.value, ApiError) else "error"
        self.crawler.stats.inc_value(stats_keys.failed_by_reason(reason))
        context = PageContext.from_dict(failure.request.meta[META_KEY])
        store = ProductStore.of(self.crawler)
        calls = failure.request.meta.get(CALLS_META, 0)
        count_page(self.crawler.stats, context, calls, ok=False, probe=self.probe)
        if store.opened and reason != NOT_SENT and calls:
            await self._record(store, ledger_document(
                crawl.crawl_id(self.crawler), context, PageSummary(0), calls, ledger_now(),
                planned=planned_key(context, self.plan.queries), state=LOST))
        if not self.probe:
            self._follow(await self.frontier.on_lost(context))
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_failed, request=failure.request, reason=reason
        )

    async def _record(self, store: ProductStore, document: dict[str, Any]) -> None:
        """A page with no products to wait for goes to the ledger at once."""
        try:
            await Ledger.of(self.crawler).record(store, [document])
        except PyMongoError as exc:  # the page is fetched again by a resume: nothing lost
            logger.warning("Could not record page %s in the resume ledger: %s",
                           document["key"], exc)

    def _apply(self, decision: Decision) -> list[scrapy.Request]:
        """Count and log what the frontier learned, hand its losses to the accounting; the
        requests it asks for."""
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
        requests = [self.page_request(context) for context in decision.follow]
        if decision.replayed:
            for request in requests:
                request.meta[REPLAYED_META] = True
        return requests

    def _follow(self, decision: Decision) -> None:
        """Apply a decision and queue what it asks for, now (see the module's docstring)."""
        engine = self.crawler.engine
        for request in self._apply(decision):
            engine.crawl(request)

    def _request_dropped(self, request: scrapy.Request) -> None:
        """A duplicate the scheduler dropped will never be fetched (its copy will)."""
        if META_KEY not in request.meta or request.meta.get(REPLAYED_META):
            return
        context = PageContext.from_dict(request.meta[META_KEY])
        dropped = asyncio.ensure_future(self.frontier.on_dropped(context))
        self._dropped.add(dropped)
        dropped.add_done_callback(self._settle_dropped)

    def _settle_dropped(self, dropped: asyncio.Future[Decision]) -> None:
        self._dropped.discard(dropped)
        self._follow(dropped.result())

    def _keep_open(self) -> None:
        """Not idle while a dropped page is being accounted for."""
        if self._dropped:
            raise DontCloseSpider

    async def _report_at_close(self) -> None:
        self._apply(await self.frontier.at_close())
        self._report_resume()

    def _report_resume(self) -> None:
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
