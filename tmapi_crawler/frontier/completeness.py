"""What a query could not read: the facts a crawl's record of completeness is made of.

The frontier reports a ``Loss`` in its ``Decision`` the moment it knows part of a category
will not be read (a stale stop, a part no split reaches); the transport's give-ups and the
crawl's stop add theirs. The crawl record (``crawl_runs.complete`` and
``crawl_runs.incomplete.<cat_id>``) is made of these and nothing else, so the exit status, the
final line and the report all say the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tmapi_crawler.closing import FINISHED, PROBED
from tmapi_crawler.per_crawler import PerCrawler

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from tmapi_crawler.frontier.context import PageContext

#: More results in one price or cell than any split reaches.
UNREACHABLE: Final = "unreachable"
#: Paging stopped because pages brought (almost) nothing new while the API said there was more.
STALE_STOPPED: Final = "stale_stopped"
#: Pages the transport gave up on after its retries.
PAGES_GIVEN_UP: Final = "pages_given_up"
#: The crawl stopped before its end: the budget, the API's 439, Ctrl-C.
STOPPED: Final = "stopped"
REASONS: Final = (UNREACHABLE, STALE_STOPPED, PAGES_GIVEN_UP, STOPPED)


@dataclass(frozen=True, slots=True)
class Loss:
    """Part of ``cat_id`` the crawl did not read, and why.

    ``query`` is the key of the query behind it; ``unreached`` is at least this many results
    left unread, or None when nothing says how many.
    """

    cat_id: int
    reason: str
    query: str
    unreached: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")


def loss_to_dict(loss: Loss) -> dict[str, Any]:
    return {"cat_id": loss.cat_id, "reason": loss.reason, "query": loss.query,
            "unreached": loss.unreached}


def loss_from_dict(data: Mapping[str, Any]) -> Loss:
    unreached = data.get("unreached")
    return Loss(int(data["cat_id"]), str(data["reason"]), str(data["query"]),
                None if unreached is None else int(unreached))


def merge(losses: Iterable[Loss]) -> list[Loss]:
    """One loss per category, reason and query (the same one learned twice: by a replay, by
    two workers), with the most it is known to leave unread."""
    merged: dict[tuple[int, str, str], Loss] = {}
    for loss in losses:
        key = (loss.cat_id, loss.reason, loss.query)
        known = merged.get(key)
        if known is None or (loss.unreached or 0) > (known.unreached or 0):
            merged[key] = loss
    return sorted(merged.values(), key=lambda x: (x.cat_id, x.reason, x.query))


_LOSSES: PerCrawler[Losses] = PerCrawler()


class Losses:
    """One process's losses, and the queries it still has pages of.

    Kept per crawler here, below the page accounting that feeds it (``accounting``), so the
    run recorder (``storage.runs``) and a cluster worker's progress read it without reaching
    up.
    """

    def __init__(self) -> None:
        self._losses: list[Loss] = []
        #: Query keys with pages asked for and not done, and their category.
        self._open: dict[str, int] = {}

    @classmethod
    def of(cls, crawler: Crawler) -> Losses:
        return _LOSSES.made(crawler, cls)

    def track(self, follow: Iterable[PageContext], done: Iterable[str]) -> None:
        """The queries a decision of the frontier opened (the pages it follows) or finished
        (their keys)."""
        for context in follow:
            self._open[context.query.key()] = context.query.cat_id
        for key in done:
            self._open.pop(key, None)

    def add(self, losses: Iterable[Loss]) -> None:
        self._losses.extend(losses)

    def losses(self, finish_reason: str | None = None) -> list[Loss]:
        """Every loss so far; with a finish reason other than ``finished``, also the queries
        the stop left with pages to fetch."""
        stopped = []
        if finish_reason is not None and finish_reason not in (FINISHED, PROBED):
            stopped = [Loss(cat_id, STOPPED, key) for key, cat_id in self._open.items()]
        return merge([*self._losses, *stopped])
