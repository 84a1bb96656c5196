"""The frontier: from one page's context and answer, the pages to fetch next.

Paging, the bounded window, the reach (configured or learned from answers), splitting past it,
bad paging and knowing when a query is finished are decided by the frontier, and only by it.
A decision is a function of the page's ``PageContext``, its ``PageSummary`` and the
``FrontierState``; it returns the follow-up contexts and what it learned (counters, notes for
the log, a cap, the queries finished). The spider only wires it: answer in, items and requests
out.

Each decision is a layer, one a module (``decisions.Queries``, ``reach.Reach``,
``cells.Cells``, ``windows.Windows``); this one is what the caller asks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from copy import copy
from dataclasses import replace

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import paging
from tmapi_crawler.frontier.cells import CELLS_OPEN
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision, Note, state_key
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.frontier.windows import Windows
from tmapi_crawler.plan import Query


class Frontier(Windows):
    """From one page's context and answer, the pages to fetch next."""

    async def plan(self, queries: Iterable[Query]) -> Decision:
        """Begin the planned queries: their first pages."""
        decision = Decision()
        for query in queries:
            await self._begin(decision, PageContext(query))
        return decision

    def _for_page(self, context: PageContext) -> Frontier:
        """This frontier, on the state as a decision about the page sees it
        (``FrontierState.for_page``)."""
        scoped = copy(self)
        scoped.state = self.state.for_page(context.key)
        return scoped

    async def on_page(self, context: PageContext, summary: PageSummary) -> Decision:
        """Decide from an answered page."""
        scoped = self._for_page(context)
        decision = await scoped._on_page(context, summary)
        decision.replayed = scoped.state.replayed
        return decision

    async def on_lost(self, context: PageContext) -> Decision:
        """Decide from a page given up on: its window moves on all the same. A walk whose
        last reachable page was lost goes on, once its other pages are in, from the highest
        price they showed."""
        scoped = self._for_page(context)
        decision = await scoped._on_lost(context)
        decision.replayed = scoped.state.replayed
        return decision

    async def _on_page(self, context: PageContext, summary: PageSummary) -> Decision:
        decision = Decision()
        known = await self._known(context)
        context = self._resized(decision, context, summary)
        if paging.short(summary, context.page_size):
            decision.counters[stats_keys.PAGING_SHORT] += 1
        reach = await self._reach(decision, context, summary)
        if context.cell is not None:
            await self._seen_in_cell(context.cell, summary)
        own: list[PageContext] = []
        ended, new = await self._stale(decision, context, summary)
        if not ended:
            context, ended = await self._split(decision, context, summary, reach, own)
        await self._cut_short(decision, context, summary)
        await self._advance(decision, context, summary, reach, own, known=known, ended=ended,
                            new=new)
        return decision

    async def _on_lost(self, context: PageContext) -> Decision:
        decision = Decision()
        known = await self._known(context)
        key = context.query.key()
        if context.page == context.ahead and await self.state.claim(state_key(key, "decided")):
            await self.state.claim(state_key(key, "resume"))
        await self._advance(decision, context, None, await self._current_reach(), [],
                            known=known, ended=context.page == 1)  # nothing known of it
        return decision

    async def on_dropped(self, context: PageContext) -> Decision:
        """A page the scheduler dropped as a duplicate: the copy it duplicates moves the
        window on; this one only counts as resolved."""
        decision = Decision()
        key = context.query.key()
        if await self.state.add(state_key(key, "open"), -1) == 0:
            await self._done(decision, context, await self.state.get(state_key(key, "hi")) or 1)
        return decision

    async def at_close(self) -> Decision:
        """What is left unsettled when the crawl ends (cut short, or shared with workers)."""
        decision = Decision()
        cells = await self.state.get(CELLS_OPEN)
        if cells:
            decision.counters[stats_keys.SPLIT_UNSETTLED_CELLS] += cells
            decision.notes.append(Note(
                logging.WARNING, f"Out of reach unknown for {cells} queries over the cap at one "
                "price: their sort queries did not all finish here"))
        return decision

    def _resized(self, decision: Decision, context: PageContext,
                 summary: PageSummary) -> PageContext:
        """A first page served smaller than asked: the query's pages are numbered in the size
        served from now on. (Only page 1 is ever asked for before that is known.)"""
        served = summary.page_size
        if context.page != 1 or served is None or served >= context.page_size:
            return context
        decision.counters[stats_keys.PAGING_RESIZED] += 1
        decision.notes.append(Note(
            logging.INFO, f"{context.query.key()}: the API serves {served} results per page, "
            f"not {context.page_size}: its pages are planned at {served}"))
        return replace(context, size=served)
