"""What the frontier's decisions are made of: the ``Decision`` a page's answer comes to, the
settings they are taken under, the scheduler priority of a page, and the queries they begin.

The frontier decides, from a page's ``PageContext``, its ``PageSummary`` and the
``FrontierState``, which pages follow and what was learned — one decision a module, each a
layer over the one below (``Queries`` here; ``reach.Reach``: the reach and the walks past it;
``cells.Cells``: splits, and the sort cells no filter cuts; ``windows.Windows``: paging, its
window and staleness; ``frontier.Frontier``: what the caller asks). A decision returns the
follow-up contexts and what it learned (counters, notes for the log, a cap, the queries
finished); the spider only wires it: answer in, items and requests out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.completeness import Loss
from tmapi_crawler.frontier.context import CellRef, PageContext
from tmapi_crawler.frontier.state import FrontierState, MemoryState
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


def state_key(query_key: str, name: str) -> str:
    """A query's entry in the ``FrontierState``."""
    return f"{query_key}|{name}"


#: The queries begun and done, counted in the state as each is decided: the workers of a
#: cluster and its seeds decide each query once (a replayed decision answers from its memo), so
#: on a shared state these are the cluster crawl's totals (``distributed.status``).
QUERIES_BEGUN: Final = "queries|begun"
QUERIES_DONE: Final = "queries|done"


class Queries:
    """The frontier's memory and settings, and the queries it begins."""

    def __init__(self, settings: FrontierSettings, state: FrontierState | None = None) -> None:
        self.settings = settings
        self.state: FrontierState = state if state is not None else MemoryState()
        self._id_span = max(settings.window, MIN_ID_SPAN)

    async def _begin(self, decision: Decision, context: PageContext) -> bool:
        """Ask for a query's page 1, unless the query was begun already (by another split)."""
        key = context.query.key()
        if not await self.state.claim(state_key(key, "started")):
            return False
        await self.state.add(state_key(key, "open"), 1)
        await self.state.add(QUERIES_BEGUN, 1)
        decision.counters[stats_keys.QUERIES] += 1
        decision.counters[stats_keys.PAGES_KNOWN] += 1
        decision.follow.append(context)
        return True

    async def _children(self, decision: Decision, context: PageContext, how: str,
                        queries: Iterable[Query], cell: CellRef | None = None, *,
                        last: int = 1, ahead: int | None = None) -> int:
        """Begin the queries a split leads to; how many were new. ``last``: the pages each
        is known to hold already; ``ahead``: the page each asks for ahead of its window."""
        begun = 0
        for query in queries:
            child = PageContext(query, last=last, size=context.size, ahead=ahead,
                                by_price=context.by_price, cell=cell, depth=context.depth + 1)
            begun += await self._begin(decision, child)
        decision.counters[stats_keys.SPLIT_QUERIES] += 1
        decision.counters[stats_keys.split_by(how)] += 1
        decision.counters[stats_keys.SPLIT_SLICES] += begun
        return begun
