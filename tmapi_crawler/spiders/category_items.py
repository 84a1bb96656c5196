"""The ``category_items`` spider: every product of the requested queries, page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy.http import TextResponse
from twisted.python.failure import Failure

from tmapi_crawler import api
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.paging import page_url, pages_after
from tmapi_crawler.parsing import read_page
from tmapi_crawler.plan import Plan, Query, plan_from_arguments
from tmapi_crawler.transport import META_KEY, STATS, ApiError


class CategoryItemsSpider(scrapy.Spider):
    name = "category_items"

    def __init__(self, **kwargs: Any) -> None:
        arguments = {k: v for k, v in kwargs.items() if k != "name"}
        self.arguments = arguments
        self.plan: Plan = plan_from_arguments(arguments)
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
        self.crawler.stats.set_value(f"{STATS}/queries", len(self.plan.queries))
        for query in self.plan.queries:
            yield self.page_request(query, 1, known_last=1)

    def page_request(self, query: Query, page: int, known_last: int) -> scrapy.Request:
        """A page's request; its meta is plain data so it can be queued anywhere."""
        return scrapy.Request(
            page_url(self.base_url, query, page),
            callback=self.parse,
            errback=self.page_failed,
            # Page 1 first: it tells how many pages a query has, so work is known early.
            priority=-min(page, 1000) + 1,
            meta={META_KEY: {"query": query.to_dict(), "page": page, "last": known_last}},
        )

    def parse(self, response: TextResponse) -> Iterator[ProductItem | scrapy.Request]:
        context = response.meta[META_KEY]
        query = Query.from_dict(context["query"])
        page_number = context["page"]
        page = read_page(response)
        stats = self.crawler.stats
        stats.inc_value(f"{STATS}/pages")
        if not page.items:
            stats.inc_value(f"{STATS}/pages/empty")
        following = pages_after(
            page_number,
            context["last"],
            items=len(page.items),
            page_size=query.page_size,
            total_count=page.total_count,
            has_next_page=page.has_next_page,
            max_pages=self.plan.max_pages,
            result_cap=self.result_cap,
        )
        last = max(context["last"], following[-1] if following else 0)
        filters = query.filters()
        items = [
            ProductItem.from_raw(raw, QueryContext(
                cat_id=query.cat_id, language=query.language, sort=query.sort,
                filters=filters, page=page_number, position=position,
            ))
            for position, raw in enumerate(page.items)
        ]
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_parsed, request=response.request, items=items
        )
        for number in following:
            yield self.page_request(query, number, last)
        yield from items
        stats.inc_value(f"{STATS}/items", len(items))

    def page_failed(self, failure: Failure) -> None:
        """A page given up on is counted by reason; the transport already logged why."""
        reason = failure.value.reason if isinstance(failure.value, ApiError) else "error"
        self.crawler.stats.inc_value(f"{STATS}/pages/failed_by_reason/{reason}")
        self.crawler.signals.send_catch_log(
            tmapi_signals.page_failed, request=failure.request, reason=reason
        )
