"""What a crawl could not read, kept beside the crawl rather than in the spider.

The extension gathers the ``Loss`` records (``frontier.completeness``) of one process: those
the frontier puts in each ``Decision`` (the spider hands every decision it applies here), a
page given up on (the ``page_failed`` signal), and, when the crawl stops before its end (a
budget, a 439, Ctrl-C), every query it left with pages to fetch. The run recorder
(``storage.runs``) turns them into ``crawl_runs.complete`` and ``crawl_runs.incomplete``; a
cluster worker reports them with its progress (the ``worker_snapshot`` signal), so the finaliser
records every worker's.

Every loss also marks its category incomplete for coverage: a category not read whole cannot
tell which of its products are gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED, PROBED
from tmapi_crawler.frontier.completeness import PAGES_GIVEN_UP, STOPPED, Loss
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.storage.coverage import mark_incomplete
from tmapi_crawler.transport.middleware import NOT_SENT

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.frontier.decisions import Decision

_ACCOUNTS: WeakKeyDictionary[Crawler, Completeness] = WeakKeyDictionary()


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


class Completeness:
    """The extension: this process's losses, and the queries it still has pages of."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._losses: list[Loss] = []
        #: Query keys with pages asked for and not done, and their category.
        self._open: dict[str, int] = {}

    @classmethod
    def of(cls, crawler: Crawler) -> Completeness:
        account = _ACCOUNTS.get(crawler)
        if account is None:
            account = _ACCOUNTS[crawler] = cls(crawler)
            crawler.signals.connect(account.page_failed, signal=tmapi_signals.page_failed)
            crawler.signals.connect(account.worker_snapshot,
                                    signal=tmapi_signals.worker_snapshot)
        return account

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Completeness:
        return cls.of(crawler)

    def apply(self, decision: Decision) -> None:
        """What a decision of the frontier says was lost, and which queries it opened or
        finished."""
        for context in decision.follow:
            self._open[context.query.key()] = context.query.cat_id
        for key in decision.done:
            self._open.pop(key, None)
        self.add(decision.losses)

    def add(self, losses: Iterable[Loss]) -> None:
        stats = self.crawler.stats
        for loss in losses:
            self._losses.append(loss)
            stats.inc_value(stats_keys.completeness_loss(loss.reason))
            mark_incomplete(stats, loss.cat_id)

    def page_failed(self, request: Request, reason: str) -> None:
        """A page given up on; one the stop kept from being sent is the stop's loss."""
        if META_KEY not in request.meta:
            return
        context = PageContext.from_dict(request.meta[META_KEY])
        self.add([Loss(context.query.cat_id, STOPPED if reason == NOT_SENT else PAGES_GIVEN_UP,
                       context.query.key())])

    def worker_snapshot(self) -> dict[str, Any]:
        """A cluster worker's losses so far, which the finaliser records with every other
        worker's (``distributed.status.read_totals``)."""
        return {"losses": [loss_to_dict(loss) for loss in self.losses()]}

    def losses(self, finish_reason: str | None = None) -> list[Loss]:
        """Every loss so far; with a finish reason other than ``finished``, also the queries
        the stop left with pages to fetch."""
        stopped = []
        if finish_reason is not None and finish_reason not in (FINISHED, PROBED):
            stopped = [Loss(cat_id, STOPPED, key) for key, cat_id in self._open.items()]
        return merge([*self._losses, *stopped])
