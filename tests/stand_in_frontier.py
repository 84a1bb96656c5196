"""A frontier that reports the losses the crawl's record is made of, for tests of that record.

It stands in for the frontier's own ``Decision.losses`` (the paging work fills them): a part
of a category more results at one price than any split reaches, which the frontier counts as
``split/unreachable``, becomes an ``unreachable`` loss of the query that found it. Crawled as
the ``category_items_stand_in`` spider (``SPIDER_MODULES``).
"""

from __future__ import annotations

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.completeness import UNREACHABLE, Loss
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision, Frontier
from tmapi_crawler.frontier.state import FrontierState
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.spiders.category_items import CategoryItemsSpider

SPIDER_MODULES = "tmapi_crawler.spiders,tests.stand_in_frontier"


class StandInFrontier(Frontier):
    async def on_page(self, context: PageContext, summary: PageSummary) -> Decision:
        decision = await super().on_page(context, summary)
        missing = decision.counters[stats_keys.SPLIT_UNREACHABLE]
        if missing or decision.counters[stats_keys.SPLIT_UNREACHABLE_UNKNOWN]:
            decision.losses.append(Loss(context.query.cat_id, UNREACHABLE, context.query.key(),
                                        missing or None))
        return decision


class StandInSpider(CategoryItemsSpider):
    name = "category_items_stand_in"

    def build_frontier(self, state: FrontierState | None = None) -> Frontier:
        frontier = super().build_frontier(state)
        return StandInFrontier(frontier.settings, frontier.state)
