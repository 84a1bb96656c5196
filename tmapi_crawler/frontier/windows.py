"""A query's paging: its window, its last page, its stale pages, and when it is done.

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

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier import paging
from tmapi_crawler.frontier.cells import Cells
from tmapi_crawler.frontier.completeness import STALE_STOPPED, Loss
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import (
    QUERIES_DONE,
    STALE_LIMIT,
    Decision,
    Note,
    stale_below,
    state_key,
)
from tmapi_crawler.frontier.summary import PageSummary


class Windows(Cells):
    """Paging: each query's window of pages, moved on by every page resolved."""

    async def _stale(self, decision: Decision, context: PageContext,
                     summary: PageSummary) -> tuple[bool, int | None]:
        """Whether the query is stopped: its pages keep bringing (almost) nothing new (a
        listing stuck on one page, or ``has_next_page`` without anything new); and how many
        products this page brought that its recent pages had not shown (None: no ids).

        Only the ids of its last pages are kept, in sets of ``_id_span`` pages: a page goes
        into its own set and the next, and is compared with its own.
        """
        state, key, page = self.state, context.query.key(), context.page
        if await state.get(state_key(key, "stopped")):
            return True, None
        if not summary.ids:
            return False, None
        span = (page - 1) // self._id_span
        new = await state.add_ids(state_key(key, f"ids{span}"), summary.ids)
        await state.add_ids(state_key(key, f"ids{span + 1}"), summary.ids)
        if span >= 2 and page != context.ahead:
            await state.forget(state_key(key, f"ids{span - 2}"))
        if new >= stale_below(context.page_size):
            return False, new
        decision.counters[stats_keys.PAGING_STALE] += 1
        if await state.add(state_key(key, "stale"), 1) < STALE_LIMIT:
            return False, new
        if await state.claim(state_key(key, "stopped")):
            decision.counters[stats_keys.PAGING_STOPPED] += 1
            decision.notes.append(Note(
                logging.WARNING, f"{key}: {STALE_LIMIT} of its pages repeated (almost) only "
                f"products of its earlier pages; stopped paging it at page {page}",
                context.query.cat_id))
            decision.losses.append(Loss(context.query.cat_id, STALE_STOPPED, key))
        return True, new

    async def _cut_short(self, decision: Decision, context: PageContext,
                         summary: PageSummary) -> None:
        """``max_pages`` leaves results unread: the category cannot have been seen whole."""
        max_pages = self.settings.max_pages
        if max_pages is None:
            return
        size, total = context.page_size, summary.total_count
        more = (total is not None and total > max_pages * size) or (
            context.page >= max_pages and summary.has_next_page is True)
        if more and await self.state.claim(state_key(context.query.key(), "cut")):
            decision.notes.append(Note(
                logging.DEBUG, f"{context.query.key()}: max_pages={max_pages} leaves results "
                "unread", context.query.cat_id))

    async def _begin(self, decision: Decision, context: PageContext) -> bool:
        """Begin a query. One known to hold ``context.last`` pages already (the walk of a
        query whose page 1 showed it holds more than the reach) asks for its window, and its
        page ahead, with its page 1: not one round trip of the API later, with every permit
        but one idle meanwhile. Its pages ask for the rest as page 1's would have."""
        if not await super()._begin(decision, context):
            return False
        if context.last > 1:
            state, key, last, ahead = self.state, context.query.key(), context.last, context.ahead
            window = self.settings.window - (1 if ahead else 0)
            own = [context.at(n, last) for n in range(2, min(last, window) + 1) if n != ahead]
            if ahead and await state.claim(state_key(key, "ahead")):
                own.append(context.at(ahead, last))
            top = max((c.page for c in own if c.page != ahead), default=1)
            await state.raise_to(state_key(key, "hi"), top)
            await state.add(state_key(key, "open"), len(own))
            decision.counters[stats_keys.PAGES_KNOWN] += max(last, top, ahead or 0) - 1
            decision.follow.extend(own)
        return True

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
            await state.lower_to(state_key(key, "end"), 0)
        elif summary is not None:
            end = paging.ends_at(page, summary)
            if end is not None:
                await state.lower_to(state_key(key, "end"), end)
            else:
                grown = paging.last_page(page, context.last, summary, context.page_size,
                                         new=await self._pace(context, new))
                before = await state.raise_to(state_key(key, "last"),
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
        hi = max(top, await state.raise_to(state_key(key, "hi"), top) or 0)
        decision.counters[stats_keys.PAGES_KNOWN] += max(last, hi, context.ahead or 0) - known
        decision.follow.extend(own)
        if await state.add(state_key(key, "open"), len(own) - 1) == 0:
            await self._done(decision, context, hi)

    async def _pace(self, context: PageContext, new: int | None) -> int | None:
        """New products a page of the query brings: the most any page after the first did
        (page 1 shows promoted items as new; a listing page showing one of them again brings
        one fewer). None while no page that is not stale says."""
        if new is None or new < stale_below(context.page_size):
            return None
        if context.page in (1, context.ahead):  # nothing before it to compare with
            return await self.state.get(state_key(context.query.key(), "pace"))
        return max(new, await self.state.raise_to(state_key(context.query.key(), "pace"), new) or 0)

    async def _known(self, context: PageContext) -> int:
        """Pages of the query known so far: up to its last page, or requested."""
        hi = await self.state.get(state_key(context.query.key(), "hi")) or context.page
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
        grown = await self.state.get(state_key(key, "last"))
        end = await self.state.get(state_key(key, "end"))
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
        ids = {state_key(key, f"ids{n}") for n in (*range(last_span - 3, last_span + 2),
                                                *range(ahead_span - 1, ahead_span + 2))}
        await self.state.forget(*(state_key(key, n) for n in (
            "open", "hi", "last", "end", "stale", "stopped", "decided", "ahead", "cut", "pace")),
            *ids)
        if await self.state.get(state_key(key, "resume")):
            await self.state.forget(state_key(key, "resume"))
            await self._walk_from(decision, context, await self._kept_edge(context), None)
        await self.state.forget(state_key(key, "edge"))
        if context.cell is not None:
            await self._cell_member_done(decision, context)
