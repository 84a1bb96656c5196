"""Probe mode (``scrapy estimate --probe``): page 1 of each planned query, and nothing more.

A ``Probe`` stands in for the crawl's ``Frontier``: it begins the planned queries on it (so the
queries are known as a crawl's), asks for the page 1s the crawl it resumes does not hold, keeps
what each page 1 says (``probed``, which the estimate reads) and decides nothing else. Its
decisions count nothing: the crawl that resumes the probe replays these pages and counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.replay import HeldPage, Replay
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query


class Probe:
    def __init__(self, frontier: Frontier) -> None:
        self.frontier = frontier
        self.settings = frontier.settings
        #: Each planned query's page 1 summary, fetched or held, by page key.
        self.probed: dict[str, PageSummary] = {}

    async def begin(self, queries: Iterable[Query], held: Mapping[str, HeldPage]) -> Replay:
        """The page 1s to fetch (``left``) and how many are held already (``held``); no
        decision to count."""
        begun = Replay()
        for context in (await self.frontier.plan(queries)).follow:
            if context.key in held:
                self.probed[context.key] = held[context.key].summary
                begun.held += 1
            else:
                begun.left.append(context)
        return begun

    async def on_page(self, context: PageContext, summary: PageSummary) -> Decision:
        self.probed[context.key] = summary
        return Decision()

    async def on_lost(self, context: PageContext) -> Decision:
        return Decision()

    async def on_dropped(self, context: PageContext) -> Decision:
        return await self.frontier.on_dropped(context)

    async def at_close(self) -> Decision:
        return await self.frontier.at_close()
