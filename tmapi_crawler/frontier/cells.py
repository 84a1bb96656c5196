"""Splitting a query past the reach: into the queries a filter cuts it into, or — for a query no
filter can cut (more results at one price than paging reaches) — into a *cell* read under every
sort, whose results none of them reached are counted as out of reach once all are done. A
price filter the API ignores is flagged once, and the query split by the other filters."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Final

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import paging, splitting
from tmapi_crawler.frontier.completeness import UNREACHABLE, Loss
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.frontier.decisions import Decision, Note, state_key
from tmapi_crawler.frontier.reach import Reach
from tmapi_crawler.frontier.summary import PageSummary

#: Cells whose sort queries are not all done (a count in the state, shared by a cluster).
CELLS_OPEN: Final = "cells|open"
_PRICE_FILTER_NOTICE: Final = "notice|price_filter_ignored"


class Cells(Reach):
    """Splits, and the cells of queries no filter cuts."""

    async def _split(self, decision: Decision, context: PageContext, summary: PageSummary,
                     reach: int | None, own: list[PageContext]) -> tuple[PageContext, bool]:
        """Reaching past the reach; the context the query goes on with, and whether its own
        paging ends (replaced by the queries it was split into)."""
        query, state = context.query, self.state
        key = query.key()
        if context.cell is not None:
            return context, False  # a cell's sort queries are read up to the reach, no more
        if context.by_price and (query.price_start or query.price_end) and \
                splitting.ignores_prices(query, summary.prices):
            context = await self._price_ignored(decision, context)
            if context.depth and await state.claim(state_key(key, "decided")):
                # A slice the API did not narrow repeats its parent: read it apart instead.
                split = splitting.plan_split(query, by_price=False)
                return await self._replace(decision, context, summary, split), True
        walk = splitting.walked(query) and context.by_price
        if walk:
            await self._keep_edge(context, summary)
        if reach is None or self._max_pages_bind(context, reach):
            return context, False
        last_reachable = paging.pages_for(reach, context.page_size)
        if not self._capped(context, summary, reach, last_reachable):
            return context, False
        if walk:
            return await self._walk_on(decision, context, summary, last_reachable, own), False
        if not await state.claim(state_key(key, "decided")):
            return context, False
        split = splitting.plan_split(query, by_price=context.by_price)
        if split.how == "sort":
            return await self._open_cell(decision, context, summary, split, reach), False
        holds = 1
        if split.how == "walk" and summary.total_count is not None and \
                summary.total_count >= reach:
            holds = last_reachable  # the walk holds what this query holds: the reach, or more
        return await self._replace(decision, context, summary, split, holds), True

    async def _replace(self, decision: Decision, context: PageContext, summary: PageSummary,
                       split: splitting.Split, holds: int = 1) -> PageContext:
        """The query replaced by the queries ``split`` cuts it into; ``holds``: the pages a
        walk of it is known to hold (asked for a window at a time from the start)."""
        await self._children(decision, context, split.how, split.queries, last=holds,
                             ahead=holds if holds > 1 else None)
        if context.page == 1 and summary.items:
            decision.counters[stats_keys.SPLIT_EXTRA_REQUESTS] += 1  # read again by the split
        return context

    async def _price_ignored(self, decision: Decision, context: PageContext) -> PageContext:
        """Most of a page priced outside its range: the API ignores the price filter here."""
        decision.counters[stats_keys.SPLIT_PRICE_IGNORED] += 1
        if await self.state.claim(_PRICE_FILTER_NOTICE):
            decision.notes.append(Note(
                logging.WARNING, f"{context.query.key()}: most prices on page {context.page} "
                "lie outside its price range: the API ignores the price filter; queries over "
                "the cap are split by the other filters and sorts instead"))
        return replace(context, by_price=False)

    async def _open_cell(self, decision: Decision, context: PageContext, summary: PageSummary,
                         split: splitting.Split, reach: int) -> PageContext:
        """A query no filter can cut: read it under every sort, itself included (it goes on
        paging), and count what none of them reached."""
        total = summary.total_count if summary.total_count is not None else reach
        cell = CellRef(context.query.key(), total)
        begun = await self._children(decision, context, "sort", split.queries, cell)
        await self.state.add(state_key(cell.key, "cell:pending"), begun + 1)
        await self.state.add(CELLS_OPEN, 1)
        context = replace(context, cell=cell)
        await self._seen_in_cell(cell, summary)
        return context

    async def _seen_in_cell(self, cell: CellRef, summary: PageSummary) -> None:
        new = await self.state.add_ids(state_key(cell.key, "cell:ids"), summary.ids)
        if new:
            await self.state.add(state_key(cell.key, "cell:found"), new)

    async def _cell_member_done(self, decision: Decision, context: PageContext) -> None:
        cell, state = context.cell, self.state
        assert cell is not None
        if await state.add(state_key(cell.key, "cell:pending"), -1) != 0:
            return
        found = await state.get(state_key(cell.key, "cell:found")) or 0
        await state.forget(*(state_key(cell.key, f"cell:{n}") for n in ("pending", "found", "ids")))
        await state.add(CELLS_OPEN, -1)
        reach = await self._current_reach()
        why = "more results share one price than paging reaches, under every filter and sort"
        if reach and cell.total > reach:
            if missing := max(0, cell.total - found):
                decision.counters[stats_keys.SPLIT_UNREACHABLE] += missing
                decision.notes.append(Note(
                    logging.WARNING, f"{cell.key}: {missing} of its {cell.total} results are "
                    f"out of reach: {why}", context.query.cat_id))
                decision.losses.append(Loss(context.query.cat_id, UNREACHABLE, cell.key,
                                            missing))
            return
        decision.counters[stats_keys.SPLIT_UNREACHABLE_UNKNOWN] += 1
        decision.notes.append(Note(
            logging.WARNING, f"{cell.key}: at least {cell.total} results, {found} found under "
            f"every filter and sort; how many more are out of reach is unknown (the API caps "
            f"its totals): {why}", context.query.cat_id))
        decision.losses.append(Loss(context.query.cat_id, UNREACHABLE, cell.key,
                                    max(0, cell.total - found) or None))
