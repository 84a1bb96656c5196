"""The ``category_items`` spider: every product of the requested queries, page by page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from decimal import Decimal
from functools import cached_property
from typing import Any

import scrapy
from scrapy import signals
from scrapy.http import TextResponse
from twisted.python.failure import Failure

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import splitting
from tmapi_crawler.frontier.context import META_KEY, CellRef, PageContext
from tmapi_crawler.frontier.paging import page_url, pages_after
from tmapi_crawler.items import ProductItem, ProductPage, QueryContext
from tmapi_crawler.plan import Plan, Query, plan_from_arguments
from tmapi_crawler.storage.coverage import cut_short, mark_incomplete
from tmapi_crawler.transport.answers import Page, read_page
from tmapi_crawler.transport.middleware import ApiError

logger = logging.getLogger(__name__)

class CategoryItemsSpider(scrapy.Spider):
    name = "category_items"

    def __init__(self, **kwargs: Any) -> None:
        arguments = {k: v for k, v in kwargs.items() if k != "name"}
        self.arguments = arguments
        # None at all: a distributed worker that only crawls what was seeded (commands/crawl.py).
        self.plan: Plan = plan_from_arguments(arguments) if arguments else Plan(queries=())
        super().__init__()

    @staticmethod
    def check_arguments(arguments: dict[str, Any]) -> None:
        """Refuse bad arguments before the crawl opens (see ``commands/crawl.py``)."""
        plan_from_arguments(arguments)

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> CategoryItemsSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.base_url = crawler.settings.get("TMAPI_BASE_URL") or api.DEFAULT_BASE_URL
        spider.result_cap = crawler.settings.getint("TMAPI_RESULT_CAP") or None
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        self.crawler.stats.set_value(stats_keys.QUERIES, len(self.plan.queries))
        # A page given up on or dropped as a duplicate is finished too, or its query never is.
        self.crawler.signals.connect(self._request_dropped, signal=signals.request_dropped)
        self.crawler.signals.connect(self._page_given_up, signal=tmapi_signals.page_failed)
        self.crawler.signals.connect(self._report_at_close, signal=signals.spider_closed)
        for query in self.plan.queries:
            yield self._request(PageContext(query))

    def page_request(self, context: PageContext) -> scrapy.Request:
        """A page's request, built from its context alone, so it can be queued anywhere."""
        return scrapy.Request(
            page_url(self.base_url, context.query, context.page),
            callback=self.parse,
            errback=self.page_failed,
            # Page 1 first: it tells how many pages a query has, so work is known early.
            # The rest share one priority, so the scheduler's LIFO order keeps a query's
            # pages together instead of round-robin over every query.
            priority=1 if context.page == 1 else 0,
            meta={META_KEY: context.to_dict()},
            dont_filter=context.refetch,
        )

    def parse(self, response: TextResponse) -> Iterator[ProductPage | scrapy.Request]:
        context = PageContext.from_dict(response.meta[META_KEY])
        query = context.query
        page_number = context.page
        page = read_page(response)
        stats = self.crawler.stats
        stats.inc_value(stats_keys.PAGES)
        if not page.items:
            stats.inc_value(stats_keys.PAGES_EMPTY)
        reach = self._reach_after(query, page_number, page)
        following = pages_after(
            page_number,
            context.last,
            items=len(page.items),
            page_size=query.page_size,
            total_count=page.total_count,
            has_next_page=page.has_next_page,
            max_pages=self.plan.max_pages,
            result_cap=reach,
        )
        # The result cap cuts nothing short: capped queries are split, and what still stays
        # out of reach is marked by _out_of_reach.
        if cut_short(page=page_number, page_size=query.page_size, total_count=page.total_count,
                     has_next_page=page.has_next_page, max_pages=self.plan.max_pages,
                     result_cap=None):
            mark_incomplete(stats, query.cat_id)
        last = max(context.last, following[-1] if following else 0)
        filters = query.filters()
        items = [
            ProductItem.from_raw(raw, QueryContext(
                cat_id=query.cat_id, language=query.language, sort=query.sort,
                filters=filters, page=page_number, position=position,
            ))
            for position, raw in enumerate(page.items)
        ]
        product_page = ProductPage(items)
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_parsed, request=response.request,
            items=[product_page] if items else [],
        )
        splits: list[scrapy.Request] = []
        if context.cell is not None:
            self._seen_in_cell(context.cell.key, items)
        elif (total := page.total_count) is not None and reach is not None and (
                splitting.capped(total, reach) and not self._max_pages_bind(query, reach)):
            splits, stop = self._decide(query, context, total, reach, items)
            following = range(0) if stop else following
        for number in following:
            yield self._request(context.at(number, last))
        yield from splits
        self._page_finished(context)
        if items:
            yield product_page
        stats.inc_value(stats_keys.ITEMS, len(items))

    def page_failed(self, failure: Failure) -> None:
        """A page given up on is counted by reason; the transport already logged why."""
        reason = failure.value.reason if isinstance(failure.value, ApiError) else "error"
        self.crawler.stats.inc_value(stats_keys.failed_by_reason(reason))
        context = PageContext.from_dict(failure.request.meta[META_KEY])
        mark_incomplete(self.crawler.stats, context.query.cat_id)
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_failed, request=failure.request, reason=reason
        )

    @cached_property
    def _splitting(self) -> splitting.SplitState:
        return splitting.SplitState()

    def _request(self, context: PageContext) -> scrapy.Request:
        """``page_request`` within this crawl: the page counts as known and outstanding."""
        self._splitting.page_created(self._track_key(context))
        self.crawler.stats.inc_value(stats_keys.PAGES_KNOWN)
        return self.page_request(context)

    @staticmethod
    def _track_key(context: PageContext) -> str:
        """The query a page belongs to; a cell's sort queries are apart from the same query
        asked for elsewhere, so each cell learns when all of its own are done."""
        key = context.query.key()
        return f"{key} in {context.cell.key}" if context.cell is not None else key

    def _reach_after(self, query: Query, page_number: int, page: Page) -> int | None:
        """Results a query can reach by paging, counting the cap this answer may reveal."""
        state = self._splitting
        cap = state.observe(page_number, query.page_size, items=len(page.items),
                            total_count=page.total_count, has_next_page=page.has_next_page)
        if cap is not None and (not self.result_cap or cap < self.result_cap):
            logger.info("Paging reaches only %d results of a query (%s): splitting queries "
                        "with more", cap, query.key())
        return state.reach(self.result_cap)

    def _max_pages_bind(self, query: Query, reach: int) -> bool:
        """``max_pages`` stops the query before the cap does: splitting would only cost more."""
        max_pages = self.plan.max_pages
        return max_pages is not None and max_pages * query.page_size <= reach

    def _decide(
        self, query: Query, context: PageContext, total: int, reach: int,
        items: list[ProductItem],
    ) -> tuple[list[scrapy.Request], bool]:
        """Requests that reach what a capped query cannot, and whether its own paging stops.

        Only the query's deciding page decides (``splitting.decision_page``), once. Any other
        page of it past that one was asked for before the cap was known: once it is (not just
        bounded), the deciding page is fetched again, once, to decide.
        """
        state, stats = self._splitting, self.crawler.stats
        key, page_number = query.key(), context.page
        by_price = context.by_price
        parent_total = context.parent_total
        if (by_price and page_number == 1 and parent_total is not None and total >= parent_total
                and not splitting.is_point(query)):
            logger.warning("%s: the price filter did not narrow its parent's %d results: "
                           "splitting it by other filters and sorts", key, total)
            by_price = False
        deciding = splitting.decision_page(query, reach) if by_price else 1
        if key in state.decided or page_number < deciding:
            return [], False
        if page_number > deciding:
            if key in state.refetched or not state.settled(self.result_cap):
                return [], False
            state.refetched.add(key)
            stats.inc_value(stats_keys.SPLIT_EXTRA_REQUESTS)
            refetch = replace(context.at(deciding, deciding), refetch=True)
            return [self._request(refetch)], False
        state.decided.add(key)
        if by_price and splitting.walked(query):
            following = splitting.walk(query, self._edge(query, items))
            if not following:
                self._out_of_reach(key, query.cat_id, total - reach, total,
                                   "the API did not narrow it by price")
                return [], True
            walks = [self._request(PageContext(q)) for q in following]
            return self._split_into("walk", walks), True
        split = splitting.plan_split(query, self._prices(items), total=total, reach=reach,
                                     by_price=by_price)
        if not context.refetch:
            stats.inc_value(stats_keys.SPLIT_EXTRA_REQUESTS)  # this page 1 only probed
        slice_context = PageContext(
            query,
            parent_total=total if split.how == "price" else None,
            by_price=by_price,
            cell=CellRef(key, total) if split.how == "sort" else None,
        )
        requests = [self._request(replace(slice_context, query=q)) for q in split.queries]
        if split.how == "sort":
            # The query itself is one of the cell's sorts: read again, its products counted.
            requests.append(self._request(replace(slice_context, refetch=True)))
            stats.inc_value(stats_keys.SPLIT_EXTRA_REQUESTS)
            state.cells[key] = splitting.Cell(total, pending=len(requests))
        return self._split_into(split.how, requests), True

    def _split_into(self, how: str, requests: list[scrapy.Request]) -> list[scrapy.Request]:
        stats = self.crawler.stats
        stats.inc_value(stats_keys.SPLIT_QUERIES)
        stats.inc_value(stats_keys.split_by(how))
        stats.inc_value(stats_keys.SPLIT_SLICES, len(requests))
        stats.inc_value(stats_keys.QUERIES, len(requests))
        return requests

    @staticmethod
    def _prices(items: list[ProductItem]) -> list[Decimal]:
        return [Decimal(str(price)) for item in items
                if item.typed and (price := item.typed.get("price")) is not None]

    def _edge(self, query: Query, items: list[ProductItem]) -> Decimal | None:
        """The price a price-sorted page ends at: where the rest of its query starts."""
        prices = self._prices(items)
        if not prices:
            return None
        return max(prices) if api.PRICE_SORTS[query.sort] > 0 else min(prices)

    def _seen_in_cell(self, key: str, items: list[ProductItem]) -> None:
        cell = self._splitting.cells.get(key)
        if cell is not None:
            cell.ids.update(item.item_id for item in items if item.item_id is not None)

    def _page_finished(self, context: PageContext) -> None:
        """Count a page done; its query may be done, and with it a cell's last sort."""
        state = self._splitting
        if not state.page_finished(self._track_key(context)):
            return
        self.crawler.stats.inc_value(stats_keys.QUERIES_DONE)
        key = context.cell.key if context.cell is not None else None
        cell = state.cells.get(key) if key else None
        if key is None or cell is None:
            return
        cell.pending -= 1
        if not cell.pending:
            del state.cells[key]
            if cell.unreachable:
                self._out_of_reach(key, context.query.cat_id, cell.unreachable, cell.total,
                                   "more results share one price than paging reaches, under "
                                   "every filter and sort")

    def _out_of_reach(self, key: str, cat_id: int, count: int, total: int, why: str) -> None:
        """Results nothing can reach are counted and said, never hidden."""
        self.crawler.stats.inc_value(stats_keys.SPLIT_UNREACHABLE, count)
        mark_incomplete(self.crawler.stats, cat_id)
        logger.warning("%s: %d of its %d results are out of reach: %s", key, count, total, why)

    def _request_dropped(self, request: scrapy.Request) -> None:
        """A duplicate the scheduler dropped will never be fetched."""
        if META_KEY in request.meta:
            self.crawler.stats.inc_value(stats_keys.PAGES_KNOWN, -1)
            self._page_finished(PageContext.from_dict(request.meta[META_KEY]))

    def _page_given_up(self, request: scrapy.Request) -> None:
        self._page_finished(PageContext.from_dict(request.meta[META_KEY]))

    def _report_at_close(self) -> None:
        """The cap as answers showed it, and the cells whose sort queries did not all finish
        here (a crawl cut short, or pages taken by other workers of a cluster): how much those
        missed is unknown, and said so."""
        state = self._splitting
        if state.detected_cap is not None:
            self.crawler.stats.set_value(stats_keys.SPLIT_DETECTED_CAP, state.detected_cap)
        cells = state.cells
        if cells:
            self.crawler.stats.set_value(stats_keys.SPLIT_UNSETTLED_CELLS, len(cells))
            logger.warning("Out of reach unknown for %d queries over the cap at one price: "
                           "their sort queries did not all finish here: %s",
                           len(cells), "; ".join(sorted(cells)))
