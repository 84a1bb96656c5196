"""A cluster worker's end in ``crawl_runs``: its own share, and the cluster crawl's counts.

The distributed profile names :class:`ClusterFinisher` in ``TMAPI_RUN_FINISHER``, as it names
the Redis limiter and budget, so the run recorder (``storage.runs``) knows nothing of
clusters: the counts come from the cluster's status reading (``status.read_totals``), the one
``scrapy status`` shows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED, PROBED
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.status import read_totals, record_completeness
from tmapi_crawler.frontier.completeness import Losses, merge
from tmapi_crawler.storage import completeness
from tmapi_crawler.storage.coverage import whole_categories
from tmapi_crawler.storage.runs import CLOSED, RunFinisher, own_counts
from tmapi_crawler.storage.spool import Spool

if TYPE_CHECKING:
    from tmapi_crawler.distributed.status import CrawlTotals
    from tmapi_crawler.storage.runs import CrawlRunRecorder

logger = logging.getLogger(__name__)

#: ``crawl_runs.workers.<id>.status`` of a worker whose heartbeat expired while it crawled.
DEAD = "dead"


class ClusterFinisher(RunFinisher):
    """Records one worker's end; the finaliser (``crawl_complete``) also the crawl's."""

    def __init__(self, recorder: CrawlRunRecorder) -> None:
        super().__init__(recorder)
        #: Set by ``crawl_complete`` in the one worker that finalises the cluster crawl.
        self._finaliser = False
        recorder.crawler.signals.connect(self.crawl_complete,
                                         signal=tmapi_signals.crawl_complete)

    @property
    def cluster(self) -> Cluster:
        """Asked for once the scheduler opened it (its settings checked there)."""
        return Cluster.of(self.recorder.crawler)

    @property
    def worker_id(self) -> str:
        return self.cluster.worker_id

    @property
    def final(self) -> bool:
        return self._finaliser

    def crawl_complete(self, crawl_id: str, finaliser: bool) -> None:
        """The cluster crawl is complete: the finaliser records its end once it closed."""
        self._finaliser = finaliser and crawl_id == self.recorder.crawl_id

    async def finish(self, reason: str, status: str) -> None:
        """Record this worker's end, and the crawl's counts as the cluster counted them.

        This worker's own counts go under ``workers.<id>``. The crawl's counts are those
        ``scrapy status`` shows (Redis: pages acknowledged, sightings, every worker's answers,
        killed ones included) and the products from MongoDB, set by every worker that closes,
        so the last one leaves the latest. The finaliser of a complete crawl also marks the
        products gone from the categories seen whole, with every worker's losses counted,
        logs "Crawled completely", and marks the workers that were killed dead.
        """
        recorder = self.recorder
        crawl_id, store = recorder.crawl_id, recorder.store
        stats = recorder.stats.get_stats()
        now = datetime.now(UTC)
        products = await store.run_counts(crawl_id)
        own = {
            "status": status, "finished_at": now, "finish_reason": reason,
            "counts": own_counts(stats),
            "answers": stats_keys.with_prefix(stats, stats_keys.ANSWERS),
        }
        crawl: dict[str, Any] = {"status": status, "finished_at": now, "finish_reason": reason,
                                 "counts": dict(products)}
        statuses: dict[str, str] = {}
        totals = await self._totals()
        if reason not in (FINISHED, PROBED):
            # Stopped: what every worker lost, and the queries this one left with pages.
            shared = totals.losses if totals is not None else ()
            crawl.update(await recorder.completeness(
                merge([*shared, *Losses.of(recorder.crawler).losses(reason)]), reason))
        if totals is not None:
            crawl["counts"].update(totals.counts())
            crawl["answers"] = totals.progress["answers"]
            if self._finaliser and status == CLOSED and reason == FINISHED:
                record = await recorder.completeness(list(totals.losses), reason)
                crawl.update(record)
                await self._share_completeness(record)
                crawl["counts"]["vanished"] = await self._vanish(totals, record)
                await Spool.of(recorder.crawler).finish()
                crawl["completed_by"] = self.worker_id
                statuses = dict.fromkeys(totals.dead_workers, DEAD)
        await store.finish_worker_run(crawl_id, self.worker_id, own, crawl, statuses)
        recorder.finished = True
        await recorder.record_cost(crawl["counts"].get("products_seen"))
        for name, value in products.items():
            recorder.stats.set_value(stats_keys.product_count(name), value)

    async def _share_completeness(self, record: dict[str, Any]) -> None:
        """Tell ``scrapy status`` too (the crawl's Redis hash)."""
        try:
            await record_completeness(self.cluster, record["complete"],
                                      completeness.described(record["incomplete"]))
        except RedisError as exc:
            logger.error("Could not record in Redis whether crawl %s is complete (%s); "
                         "crawl_runs has it", self.recorder.crawl_id, exc)

    async def _totals(self) -> CrawlTotals | None:
        try:
            return await read_totals(self.cluster)
        except RedisError as exc:
            logger.error("Could not read the cluster's counts from Redis (%s): crawl %s keeps "
                         "the counts recorded before", exc, self.recorder.crawl_id)
            return None

    async def _vanish(self, totals: CrawlTotals, record: dict[str, Any]) -> int:
        """Mark vanished products of the categories the whole cluster saw whole, none of those
        its completeness record names."""
        if totals.crawl_wide_losses:
            logger.info("No category was crawled completely: %s",
                        ", ".join(totals.crawl_wide_losses))
            return 0
        named = {*totals.incomplete, *map(int, record.get("incomplete", ()))}
        return await self.recorder.vanish(whole_categories(totals.categories, named))
