"""How a crawl begins: the planned queries, and on a resume the frontier replayed over the
pages the interrupted crawl holds (free), so only what the replay asks for that is not held is
fetched.

The held pages come from the resume ledger (``storage.ledger``), which reads them as
``HeldPage``s; the replay needs nothing of the ledger but them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.decisions import Decision
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query


@dataclass(slots=True)
class HeldPage:
    """A page an interrupted crawl paid for and stored: replayed, not fetched again."""

    context: PageContext
    summary: PageSummary
    calls: int


@dataclass(slots=True)
class Replay:
    """What replaying the held pages decided: the decisions (to count and log), the pages
    left to fetch, and the pages and calls the replay saved."""

    decisions: list[Decision] = field(default_factory=list)
    left: list[PageContext] = field(default_factory=list)
    held: int = 0
    saved: int = 0


async def replay(frontier: Frontier, planned: Decision, held: Mapping[str, HeldPage]) -> Replay:
    """Replay the frontier over the pages held (free), in the order they were stored, each
    once a decision of the replay asks for it; the pages asked for that are not held are left.

    A page is replayed with the context the replay asked for it with (not the stored one), so
    the frontier's state evolves as it did; the stored order keeps it on the original path.
    """
    result = Replay()
    asked = {c.key: c for c in planned.follow}
    waiting = dict(held)
    progress = True
    while progress:
        progress = False
        for key in [k for k in waiting if k in asked]:
            page = waiting.pop(key)
            decision = await frontier.on_page(asked.pop(key), page.summary)
            result.decisions.append(decision)
            result.held += 1
            result.saved += page.calls
            asked.update((c.key, c) for c in decision.follow)
            progress = True
    result.left = list(asked.values())
    return result


async def begin(frontier: Frontier, queries: Iterable[Query],
                held: Mapping[str, HeldPage] | None) -> Replay:
    """A crawl's start: the plan's decision, then (``held``: a resume) the replay's; the pages
    to fetch first."""
    planned = await frontier.plan(queries)
    if held is None:
        return Replay(decisions=[planned], left=list(planned.follow))
    replayed = await replay(frontier, planned, held)
    replayed.decisions.insert(0, planned)
    return replayed
