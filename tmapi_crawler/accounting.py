"""What a crawl could not read, kept beside the crawl rather than in the spider.

The extension gathers the ``Loss`` records (``frontier.completeness``) of one process: those
the frontier puts in each ``Decision`` (the spider hands every decision it applies here), a
page given up on (the ``page_failed`` signal), and, when the crawl stops before its end (a
budget, a 439, Ctrl-C), every query it left with pages to fetch. It keeps them in
``frontier.completeness.Losses``, where the run recorder (``storage.runs``) reads them for
``crawl_runs.complete`` and ``crawl_runs.incomplete``; a cluster worker reports them with its
progress (the ``worker_snapshot`` signal), so the finaliser records every worker's.

Every loss also marks its category incomplete for coverage: a category not read whole cannot
tell which of its products are gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.completeness import PAGES_GIVEN_UP, STOPPED, Loss, Losses, loss_to_dict
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.storage.coverage import mark_incomplete
from tmapi_crawler.transport.middleware import NOT_SENT

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from tmapi_crawler.frontier.decisions import Decision

_ACCOUNTS: WeakKeyDictionary[Crawler, Completeness] = WeakKeyDictionary()


class Completeness:
    """The extension: feeds this process's losses (``frontier.completeness.Losses``), counts
    them and marks their categories incomplete."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.store = Losses.of(crawler)

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
        self.store.track(decision.follow, decision.done)
        self.add(decision.losses)

    def add(self, losses: Iterable[Loss]) -> None:
        stats = self.crawler.stats
        for loss in losses:
            self.store.add([loss])
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
        return self.store.losses(finish_reason)
