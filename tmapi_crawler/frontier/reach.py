"""The reach (configured, or learned from answers) and the walks past it: a query sorted by
price that holds more than paging reaches is read as a walk, each next query starting at the
highest price its last reachable page showed."""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final

from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import splitting
from tmapi_crawler.frontier.completeness import UNREACHABLE, Loss
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision, Note, Queries, state_key
from tmapi_crawler.frontier.summary import PageSummary

_CAP_REACHED: Final = "cap|reached"
_CAP_BOUND: Final = "cap|bound"
_CAP: Final = "cap"
_CAP_LEARNED: Final = "cap|learned"


class Reach(Queries):
    """How far paging reaches, and the walks that go on past it."""

    async def _current_reach(self) -> int | None:
        if self.settings.reach is not None:
            return self.settings.reach
        return await self.state.get(_CAP)

    async def _reach(self, decision: Decision, context: PageContext,
                     summary: PageSummary) -> int | None:
        """The results paging reaches: the setting, or (without one) as answers showed it.

        A configured reach is trusted: a total that says more than paging got to is more
        often a total that says too much. Without one, answers bound the cap from both sides —
        results up to a position exist, nothing past one came while ``total_count`` says
        more — and it is learned once the bounds meet: an empty page alone may sit far past
        the cap, or follow a total that said too much. Only a page that is empty, or says it
        is the last, bounds it; a short page does not.
        """
        if self.settings.reach is not None:
            return self.settings.reach
        state, page, size = self.state, context.page, context.page_size
        total = summary.total_count
        if summary.items:
            await state.raise_to(_CAP_REACHED, page * size)
        bound = None
        if total is not None and page > 1:
            if summary.items == 0 and (page - 1) * size < total - size:
                bound = (page - 1) * size
            elif summary.has_next_page is False and page * size < total - size:
                bound = page * size
        if bound is not None:
            await state.lower_to(_CAP_BOUND, bound)
        if await state.get(_CAP) is None and (bound is not None or summary.items):
            await self._learn_cap(decision, context)
        return await self._current_reach()

    async def _learn_cap(self, decision: Decision, context: PageContext) -> None:
        state = self.state
        bound, reached = await state.get(_CAP_BOUND), await state.get(_CAP_REACHED)
        if bound is None or reached is None:
            return
        if reached > bound:
            await state.forget(_CAP_BOUND)  # paging got past it: a total that said too much
            return
        if reached == bound and await state.claim(_CAP_LEARNED):
            await state.lower_to(_CAP, bound)
            decision.cap = bound
            decision.notes.append(Note(
                logging.INFO, f"Paging reaches only {bound} results of a query "
                f"({context.query.key()}): splitting queries with more"))

    def _max_pages_bind(self, context: PageContext, reach: int) -> bool:
        """``max_pages`` stops the query before the reach does: splitting would cost more."""
        max_pages = self.settings.max_pages
        return max_pages is not None and max_pages * context.page_size <= reach

    @staticmethod
    def _capped(context: PageContext, summary: PageSummary, reach: int,
                last_reachable: int) -> bool:
        """Whether the query holds more than paging reaches: a total at the reach means "at
        least the reach"; the last reachable page saying there is more means so too. Past the
        last reachable page (asked for before the cap was learned), the total alone tells."""
        total = summary.total_count
        if context.page > last_reachable:
            return total is not None and total >= reach
        if summary.items == 0:
            return False
        if context.page == 1 and summary.items < context.page_size and \
                summary.has_next_page is False:
            return False  # everything fit on page 1, whatever the total says
        if total is not None and total >= reach:
            return True
        return context.page == last_reachable and summary.has_next_page is True

    @staticmethod
    def _out_of_reach(decision: Decision, context: PageContext, total: int | None,
                      reach: int | None, why: str) -> None:
        """Results nothing can reach are counted (when the total says how many) and said."""
        query = context.query
        unreached = None
        if total is not None and reach and total > reach:
            unreached = total - reach
            decision.counters[stats_keys.SPLIT_UNREACHABLE] += unreached
            told = f"{unreached} of its {total} results are out of reach"
        else:
            decision.counters[stats_keys.SPLIT_UNREACHABLE_UNKNOWN] += 1
            told = "an unknown number of its results are out of reach"
        decision.notes.append(Note(logging.WARNING, f"{query.key()}: {told}: {why}",
                                   query.cat_id))
        decision.losses.append(Loss(query.cat_id, UNREACHABLE, query.key(), unreached))

    async def _walk_on(self, decision: Decision, context: PageContext, summary: PageSummary,
                       last_reachable: int, own: list[PageContext]) -> PageContext:
        """A capped walk: page 1 asks for the last reachable page ahead of the window; that
        page (or, when the cap was learned late, any page past it) says where the next walk
        starts."""
        state, key, page = self.state, context.query.key(), context.page
        if page == 1 and last_reachable > 1 and context.ahead is None and \
                await state.claim(state_key(key, "ahead")):
            context = replace(context, ahead=last_reachable)
            own.append(context.at(last_reachable, last_reachable))
        if page < last_reachable or not await state.claim(state_key(key, "decided")):
            return context
        crowded = False
        if page == last_reachable:
            at, ordered = splitting.edge(context.query, summary.prices)
            if not ordered:
                decision.counters[stats_keys.SPLIT_UNSORTED_PAGES] += 1
            crowded = summary.items >= context.page_size and \
                splitting.crowded(context.query, summary.prices)
        else:
            at = await self._kept_edge(context)
        await self._walk_from(decision, context, at, summary.total_count, crowded=crowded)
        return context

    async def _walk_from(self, decision: Decision, context: PageContext, at: Decimal | None,
                         total: int | None, *, crowded: bool = False) -> None:
        following = splitting.walk(context.query, at, crowded=crowded)
        if following:
            await self._children(decision, context, "walk", following)
        else:
            self._out_of_reach(decision, context, total, await self._current_reach(),
                               "its last reachable page shows no price to go on from")

    async def _keep_edge(self, context: PageContext, summary: PageSummary) -> None:
        """A walk remembers how far its pages got, for when its last reachable page cannot
        say it: lost, or answered before the cap was learned."""
        at, _ = splitting.edge(context.query, summary.prices)
        if at is None:
            return
        key = state_key(context.query.key(), "edge")
        if api.PRICE_SORTS[context.query.sort] > 0:
            await self.state.raise_to(key, int((at / api.PRICE_STEP).to_integral(ROUND_FLOOR)))
        else:
            await self.state.lower_to(key, int((at / api.PRICE_STEP).to_integral(ROUND_CEILING)))

    async def _kept_edge(self, context: PageContext) -> Decimal | None:
        kept = await self.state.get(state_key(context.query.key(), "edge"))
        return None if kept is None else kept * api.PRICE_STEP
