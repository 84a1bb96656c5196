"""The ``category_items`` spider: every product of the requested queries, page by page.

It only wires: an answer's items go out as one ``ProductPage``, its context and summary go to
the frontier (``tmapi_crawler.frontier``), which says which pages to request next; which pages,
how many at once, and when a query is done are decided there, how a crawl begins (a resume's
replay, a probe) too (``frontier.replay``, ``frontier.probe``). What a page cost, its ledger
entry and what the frontier learned are counted on the page signals (``accounting``).

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

import logging
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.exceptions import CloseSpider
from scrapy.http import TextResponse
from scrapy.utils.misc import build_from_crawler
from twisted.python.failure import Failure

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler.closing import PROBED
from tmapi_crawler.deprecations import load_class
from tmapi_crawler.frontier.context import META_KEY, REPLAYED_META, PageContext
from tmapi_crawler.frontier.decisions import Decision, FrontierSettings, priority
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.paging import page_url
from tmapi_crawler.frontier.probe import Probe
from tmapi_crawler.frontier.replay import Replay, begin
from tmapi_crawler.frontier.state import FrontierState, StateLost
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.plan import Plan, plan_from_arguments
from tmapi_crawler.storage.ledger import FRESH_ARGUMENT, Ledger, fresh_requested
from tmapi_crawler.transport.answers import read_page
from tmapi_crawler.transport.call import ApiError

logger = logging.getLogger(__name__)


class CategoryItemsSpider(scrapy.Spider):
    name = "category_items"
    frontier: Frontier | Probe

    def __init__(self, *, probe: bool = False, **kwargs: Any) -> None:
        arguments = {k: v for k, v in kwargs.items() if k not in ("name", FRESH_ARGUMENT)}
        #: Probe mode, set by ``scrapy estimate --probe`` (never by ``-a``: ``scrapy crawl``
        #: refuses an argument the plan does not know).
        self.probe = probe is True
        self.arguments = arguments
        #: ``-a fresh=true``: a new crawl of the plan even if the last one was interrupted.
        self.fresh = fresh_requested(kwargs)
        # None at all: a distributed worker that only crawls what was seeded (commands/crawl.py).
        self.plan: Plan = plan_from_arguments(arguments) if arguments else Plan(queries=())
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
        """The planned queries' first pages; a resume's left after its replay; a probe's."""
        self.crawler.signals.connect(self._at_close, signal=signals.spider_closed)
        resume = Ledger.of(self.crawler).resume
        if self.probe:
            self.frontier = Probe(self.build_frontier())
            begun = await self.frontier.begin(self.plan.queries,
                                              resume.pages if resume is not None else {})
            self._probing(begun)
        else:
            self.frontier = self.build_frontier()
            begun = await begin(self.frontier, self.plan.queries,
                                resume.pages if resume is not None else None)
        for decision in begun.decisions:
            self._decided(decision)
        if resume is not None and not self.probe:
            self.crawler.signals.send_catch_log(tmapi_signals.crawl_resumed,
                                                crawl_id=resume.crawl_id, replay=begun)
        for context in begun.left:
            yield self.page_request(context)

    def _probing(self, begun: Replay) -> None:
        """Say what the probe pays for before it is sent; close it once every page 1 is
        answered or given up on: it ends resumable."""
        self.crawler.signals.connect(self._probe_done, signal=signals.spider_idle)
        self.crawler.signals.send_catch_log(tmapi_signals.probe_planned,
                                            calls=len(begun.left), held=begun.held)
        logger.info("Probing: page 1 of %d planned queries (%d held already)",
                    len(begun.left), begun.held)

    def _probe_done(self) -> None:
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
        summary = PageSummary.read(response.json()["data"], items)
        # A shared state that is gone (Redis lost the cluster crawl) decides nothing, but this
        # page is paid for: its products and ledger page are kept, so a resume replays it
        # instead of paying again; it is not said parsed, and the error stops the worker.
        state_lost: StateLost | None = None
        decision = Decision()
        try:
            decision = await self.frontier.on_page(context, summary)
        except StateLost as exc:
            state_lost = exc
        self.follow(decision)
        product_page = ProductPage(items)
        await self.crawler.signals.send_catch_log_async(
            tmapi_signals.page_answered, request=response.request, summary=summary,
            decision=decision, page=product_page)
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
        """A page given up on: accounted for (``page_given_up``), then its query's window moves
        on. Its loss is the accounting's (``page_failed``)."""
        reason = failure.value.reason if isinstance(failure.value, ApiError) else "error"
        await self.crawler.signals.send_catch_log_async(
            tmapi_signals.page_given_up, request=failure.request, reason=reason)
        context = PageContext.from_dict(failure.request.meta[META_KEY])
        self.follow(await self.frontier.on_lost(context))
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_failed, request=failure.request, reason=reason
        )

    def follow(self, decision: Decision) -> None:
        """Have a decision accounted for, and queue what it asks for, now (see the module's
        docstring)."""
        self._decided(decision)
        for context in decision.follow:
            request = self.page_request(context)
            if decision.replayed:
                request.meta[REPLAYED_META] = True
            self.crawler.engine.crawl(request)

    def _decided(self, decision: Decision) -> None:
        self.crawler.signals.send_catch_log(tmapi_signals.frontier_decided, decision=decision)

    async def _at_close(self) -> None:
        self._decided(await self.frontier.at_close())
