"""The frontier: from one page's context and answer, the pages to fetch next.

Paging, the bounded window, the reach (configured or learned from answers), splitting past it,
bad paging and knowing when a query is finished are decided here, and only here. A decision is
a function of the page's ``PageContext``, its ``PageSummary`` and the ``FrontierState``; it
returns the follow-up contexts and what it learned (counters, notes for the log, a cap, the
queries finished). The spider only wires it: answer in, items and requests out.

Paging is windowed: a query never has more than ``window`` pages queued or in flight. Page 1
asks for the next ``window`` pages; each page answered, failed or dropped asks for the page a
window further, up to the query's last page — as far as ``total_count`` says, bounded by the
reach, and moved by ``has_next_page`` — so no amount of pages a total claims is ever queued,
and an end found early costs at most a window of empty pages. Every page counts against the
query until it is resolved; when none is left the query is done.

A page is *stale* when it brings fewer than ``stale_below(page_size)`` products the query had
not shown on its recent pages — fewer than a tenth of a page, and at least one: 0 or 1 of 20.
A listing may repeat promoted items in fixed slots on every page (11 of 20, say): its pages
bring 9 new products each and are never stale, whatever repeats; a listing stuck on one page
brings none. ``STALE_LIMIT`` stale pages stop the query, and the stop is reported as a
``Loss`` (``completeness.STALE_STOPPED``). Such a listing goes on past the last page its
``total_count`` implies (``has_next_page`` says so): a page at or past that last page that
brought new products moves the last page to where the query's pace — the most new products
a page after the first brought — would end the total (``paging.last_page``), bounded by the
reach like every last page, so its pages are read a window at a time rather than one by one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from copy import copy
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final

from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import paging, splitting
from tmapi_crawler.frontier.completeness import STALE_STOPPED, UNREACHABLE, Loss
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.frontier.state import FrontierState, MemoryState
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query

#: Pages of one query that bring (almost) nothing new before it is stopped: a listing that
#: repeats itself, whatever it says about more pages, costs this many calls and a window.
STALE_LIMIT: Final = 3
#: A page bringing fewer new products than this share of its size (and at least one) is
#: stale (``stale_below``).
STALE_SHARE: Final = 10
#: Scheduler priorities: pages of queries under way go before planned queries not begun yet
#: (priority 0), and older splits before newer ones, so few queries are active at once.
PRIORITY_TOP: Final = 100
#: Pages per set of remembered ids: a page is compared with the pages of its set and the set
#: before, which covers at least the last window of pages.
MIN_ID_SPAN: Final = 8


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log; ``cat_id`` names a category the crawl cannot have seen whole."""

    level: int
    message: str
    cat_id: int | None = None


@dataclass(slots=True)
class Decision:
    """What to fetch next and what was learned, for the caller to apply."""

    follow: list[PageContext] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    notes: list[Note] = field(default_factory=list)
    #: A result cap learned from this answer (the configured one is never reported).
    cap: int | None = None
    #: Keys of the queries this answer finished.
    done: list[str] = field(default_factory=list)
    #: Parts of categories this answer showed the crawl will not read (the crawl's record).
    losses: list[Loss] = field(default_factory=list)
    #: The page was decided before, by a worker that died before it was acknowledged: what
    #: it asks for may be queued already, and such a copy, dropped as a duplicate, is no news.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class FrontierSettings:
    """``reach``: results paging reaches (None: unknown, learned from answers); ``window``:
    pages per query queued or in flight; ``max_pages``: pages per query the user allows."""

    reach: int | None = None
    window: int = 8
    max_pages: int | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("the window must hold at least one page")


def stale_below(page_size: int) -> int:
    """New products a page must bring not to be stale: a tenth of the page, at least one."""
    return max(1, page_size // STALE_SHARE)


def priority(context: PageContext) -> int:
    """The scheduler priority of a page (higher first).

    A planned query's page 1 waits (0) while pages of queries under way are queued; among
    those, earlier splits go first, and a split's first page and its look-ahead page just
    before its other pages, so the queries it leads to are known early.
    """
    if context.depth == 0 and context.page == 1:
        return 0
    base = PRIORITY_TOP - min(context.depth, PRIORITY_TOP - 1)
    return base + 1 if context.page in (1, context.ahead) else base


def _key(query_key: str, name: str) -> str:
    return f"{query_key}|{name}"


_CAP_REACHED: Final = "cap|reached"
_CAP_BOUND: Final = "cap|bound"
_CAP: Final = "cap"
_CAP_LEARNED: Final = "cap|learned"
_CELLS_OPEN: Final = "cells|open"
_PRICE_FILTER_NOTICE: Final = "notice|price_filter_ignored"
#: The queries begun and done, counted in the state as each is decided: the workers of a
#: cluster and its seeds decide each query once (a replayed decision answers from its memo), so
#: on a shared state these are the cluster crawl's totals (``distributed.status``).
QUERIES_BEGUN: Final = "queries|begun"
QUERIES_DONE: Final = "queries|done"


class Frontier:
    def __init__(self, settings: FrontierSettings, state: FrontierState | None = None) -> None:
        self.settings = settings
        self.state: FrontierState = state if state is not None else MemoryState()
        self._id_span = max(settings.window, MIN_ID_SPAN)

    # What the caller asks.

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
        if context.page == context.ahead and await self.state.claim(_key(key, "decided")):
            await self.state.claim(_key(key, "resume"))
        await self._advance(decision, context, None, await self._current_reach(), [],
                            known=known, ended=context.page == 1)  # nothing known of it
        return decision

    async def on_dropped(self, context: PageContext) -> Decision:
        """A page the scheduler dropped as a duplicate: the copy it duplicates moves the
        window on; this one only counts as resolved."""
        decision = Decision()
        key = context.query.key()
        if await self.state.add(_key(key, "open"), -1) == 0:
            await self._done(decision, context, await self.state.get(_key(key, "hi")) or 1)
        return decision

    async def at_close(self) -> Decision:
        """What is left unsettled when the crawl ends (cut short, or shared with workers)."""
        decision = Decision()
        cells = await self.state.get(_CELLS_OPEN)
        if cells:
            decision.counters[stats_keys.SPLIT_UNSETTLED_CELLS] += cells
            decision.notes.append(Note(
                logging.WARNING, f"Out of reach unknown for {cells} queries over the cap at one "
                "price: their sort queries did not all finish here"))
        return decision

    # Queries.

    async def _begin(self, decision: Decision, context: PageContext) -> bool:
        """Ask for a query's page 1, unless the query was begun already (by another split)."""
        key = context.query.key()
        if not await self.state.claim(_key(key, "started")):
            return False
        await self.state.add(_key(key, "open"), 1)
        await self.state.add(QUERIES_BEGUN, 1)
        decision.counters[stats_keys.QUERIES] += 1
        decision.counters[stats_keys.PAGES_KNOWN] += 1
        decision.follow.append(context)
        return True

    async def _children(self, decision: Decision, context: PageContext, how: str,
                        queries: Iterable[Query], cell: CellRef | None = None) -> int:
        """Begin the queries a split leads to; how many were new."""
        begun = 0
        for query in queries:
            child = PageContext(query, size=context.size, by_price=context.by_price, cell=cell,
                                depth=context.depth + 1)
            begun += await self._begin(decision, child)
        decision.counters[stats_keys.SPLIT_QUERIES] += 1
        decision.counters[stats_keys.split_by(how)] += 1
        decision.counters[stats_keys.SPLIT_SLICES] += begun
        return begun

    # What an answer teaches.

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

    async def _stale(self, decision: Decision, context: PageContext,
                     summary: PageSummary) -> tuple[bool, int | None]:
        """Whether the query is stopped: its pages keep bringing (almost) nothing new (a
        listing stuck on one page, or ``has_next_page`` without anything new); and how many
        products this page brought that its recent pages had not shown (None: no ids).

        Only the ids of its last pages are kept, in sets of ``_id_span`` pages: a page goes
        into its own set and the next, and is compared with its own.
        """
        state, key, page = self.state, context.query.key(), context.page
        if await state.get(_key(key, "stopped")):
            return True, None
        if not summary.ids:
            return False, None
        span = (page - 1) // self._id_span
        new = await state.add_ids(_key(key, f"ids{span}"), summary.ids)
        await state.add_ids(_key(key, f"ids{span + 1}"), summary.ids)
        if span >= 2 and page != context.ahead:
            await state.forget(_key(key, f"ids{span - 2}"))
        if new >= stale_below(context.page_size):
            return False, new
        decision.counters[stats_keys.PAGING_STALE] += 1
        if await state.add(_key(key, "stale"), 1) < STALE_LIMIT:
            return False, new
        if await state.claim(_key(key, "stopped")):
            decision.counters[stats_keys.PAGING_STOPPED] += 1
            decision.notes.append(Note(
                logging.WARNING, f"{key}: {STALE_LIMIT} of its pages repeated (almost) only "
                f"products of its earlier pages; stopped paging it at page {page}",
                context.query.cat_id))
            decision.losses.append(Loss(context.query.cat_id, STALE_STOPPED, key))
        return True, new

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
            if context.depth and await state.claim(_key(key, "decided")):
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
        if not await state.claim(_key(key, "decided")):
            return context, False
        split = splitting.plan_split(query, by_price=context.by_price)
        if split.how == "sort":
            return await self._open_cell(decision, context, summary, split, reach), False
        return await self._replace(decision, context, summary, split), True

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

    async def _replace(self, decision: Decision, context: PageContext, summary: PageSummary,
                       split: splitting.Split) -> PageContext:
        await self._children(decision, context, split.how, split.queries)
        if context.page == 1 and summary.items:
            decision.counters[stats_keys.SPLIT_EXTRA_REQUESTS] += 1  # read again by the split
        return context

    async def _walk_on(self, decision: Decision, context: PageContext, summary: PageSummary,
                       last_reachable: int, own: list[PageContext]) -> PageContext:
        """A capped walk: page 1 asks for the last reachable page ahead of the window; that
        page (or, when the cap was learned late, any page past it) says where the next walk
        starts."""
        state, key, page = self.state, context.query.key(), context.page
        if page == 1 and last_reachable > 1 and context.ahead is None and \
                await state.claim(_key(key, "ahead")):
            context = replace(context, ahead=last_reachable)
            own.append(context.at(last_reachable, last_reachable))
        if page < last_reachable or not await state.claim(_key(key, "decided")):
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
        key = _key(context.query.key(), "edge")
        if api.PRICE_SORTS[context.query.sort] > 0:
            await self.state.raise_to(key, int((at / api.PRICE_STEP).to_integral(ROUND_FLOOR)))
        else:
            await self.state.lower_to(key, int((at / api.PRICE_STEP).to_integral(ROUND_CEILING)))

    async def _kept_edge(self, context: PageContext) -> Decimal | None:
        kept = await self.state.get(_key(context.query.key(), "edge"))
        return None if kept is None else kept * api.PRICE_STEP

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
        await self.state.add(_key(cell.key, "cell:pending"), begun + 1)
        await self.state.add(_CELLS_OPEN, 1)
        context = replace(context, cell=cell)
        await self._seen_in_cell(cell, summary)
        return context

    async def _seen_in_cell(self, cell: CellRef, summary: PageSummary) -> None:
        new = await self.state.add_ids(_key(cell.key, "cell:ids"), summary.ids)
        if new:
            await self.state.add(_key(cell.key, "cell:found"), new)

    async def _cell_member_done(self, decision: Decision, context: PageContext) -> None:
        cell, state = context.cell, self.state
        assert cell is not None
        if await state.add(_key(cell.key, "cell:pending"), -1) != 0:
            return
        found = await state.get(_key(cell.key, "cell:found")) or 0
        await state.forget(*(_key(cell.key, f"cell:{n}") for n in ("pending", "found", "ids")))
        await state.add(_CELLS_OPEN, -1)
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

    async def _cut_short(self, decision: Decision, context: PageContext,
                         summary: PageSummary) -> None:
        """``max_pages`` leaves results unread: the category cannot have been seen whole."""
        max_pages = self.settings.max_pages
        if max_pages is None:
            return
        size, total = context.page_size, summary.total_count
        more = (total is not None and total > max_pages * size) or (
            context.page >= max_pages and summary.has_next_page is True)
        if more and await self.state.claim(_key(context.query.key(), "cut")):
            decision.notes.append(Note(
                logging.DEBUG, f"{context.query.key()}: max_pages={max_pages} leaves results "
                "unread", context.query.cat_id))

    # Paging.

    async def _advance(self, decision: Decision, context: PageContext,
                       summary: PageSummary | None, reach: int | None, own: list[PageContext],
                       *, known: int, ended: bool, new: int | None = None) -> None:
        """Move the query's window past this page, and count the page resolved.

        Page 1 asks for the window's pages; every other page resolved asks for the page one
        window further, so each resolved page is replaced by at most one and no more than a
        window is ever out. Page numbers alone say which page asks for which: a page queued
        by another process, or before a restart, goes on the same way. A page that learned
        the query has more pages than its context said asks for those up to its own window.
        """
        state, key, page = self.state, context.query.key(), context.page
        window = self.settings.window - (1 if context.ahead else 0)
        known_last = context.last  # pages up to it were asked for by earlier pages
        if ended:
            await state.lower_to(_key(key, "end"), 0)
        elif summary is not None:
            end = paging.ends_at(page, summary)
            if end is not None:
                await state.lower_to(_key(key, "end"), end)
            else:
                grown = paging.last_page(page, context.last, summary, context.page_size,
                                         new=await self._pace(context, new))
                before = await state.raise_to(_key(key, "last"),
                                              self._bounded(grown, context, reach))
                known_last = max(known_last, before or 0)
        last = await self._last(key, context)
        if page != context.ahead:
            first = max(2, min(known_last, page + window - 1) + 1)
            own.extend(context.at(n, last) for n in range(first, min(last, page + window) + 1)
                       if n != context.ahead)
        # The highest page asked for in the window (a look-ahead page is not in it).
        top = max((c.page for c in own if c.page != context.ahead),
                  default=0 if page == context.ahead else page)
        hi = max(top, await state.raise_to(_key(key, "hi"), top) or 0)
        decision.counters[stats_keys.PAGES_KNOWN] += max(last, hi, context.ahead or 0) - known
        decision.follow.extend(own)
        if await state.add(_key(key, "open"), len(own) - 1) == 0:
            await self._done(decision, context, hi)

    async def _pace(self, context: PageContext, new: int | None) -> int | None:
        """New products a page of the query brings: the most any page after the first did
        (page 1 shows promoted items as new; a listing page showing one of them again brings
        one fewer). None while no page that is not stale says."""
        if new is None or new < stale_below(context.page_size):
            return None
        if context.page in (1, context.ahead):  # nothing before it to compare with
            return await self.state.get(_key(context.query.key(), "pace"))
        return max(new, await self.state.raise_to(_key(context.query.key(), "pace"), new) or 0)

    async def _known(self, context: PageContext) -> int:
        """Pages of the query known so far: up to its last page, or requested."""
        hi = await self.state.get(_key(context.query.key(), "hi")) or context.page
        return max(await self._last(context.query.key(), context), hi, context.ahead or 0)

    def _bounded(self, last: int, context: PageContext, reach: int | None) -> int:
        """A last page within what paging reaches and the user allows."""
        if reach:
            last = min(last, paging.pages_for(reach, context.page_size))
        if self.settings.max_pages is not None:
            last = min(last, self.settings.max_pages)
        return max(last, 1)

    async def _last(self, key: str, context: PageContext) -> int:
        """The query's last page as known now: grown by totals and ``has_next_page``, cut by
        an end seen (the context's, for a query this process did not begin)."""
        grown = await self.state.get(_key(key, "last"))
        end = await self.state.get(_key(key, "end"))
        last = max(grown or 0, context.last)
        return last if end is None else min(last, end)

    async def _done(self, decision: Decision, context: PageContext, hi: int) -> None:
        """A query with no page left: count it, forget its state, settle its cell."""
        key = context.query.key()
        await self.state.add(QUERIES_DONE, 1)
        decision.counters[stats_keys.QUERIES_DONE] += 1
        decision.done.append(key)
        # Ids are kept for the sets around the last pages with items, which lie at most a
        # window (a set) before the highest page asked for; and around a look-ahead page.
        span = self._id_span
        last_span, ahead_span = (hi - 1) // span, ((context.ahead or 1) - 1) // span
        ids = {_key(key, f"ids{n}") for n in (*range(last_span - 3, last_span + 2),
                                                *range(ahead_span - 1, ahead_span + 2))}
        await self.state.forget(*(_key(key, n) for n in (
            "open", "hi", "last", "end", "stale", "stopped", "decided", "ahead", "cut", "pace")),
            *ids)
        if await self.state.get(_key(key, "resume")):
            await self.state.forget(_key(key, "resume"))
            await self._walk_from(decision, context, await self._kept_edge(context), None)
        await self.state.forget(_key(key, "edge"))
        if context.cell is not None:
            await self._cell_member_done(decision, context)
