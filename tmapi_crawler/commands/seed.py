"""``scrapy seed``: queue a crawl's queries for distributed workers, without calling the API.

Takes the same arguments and plan files as ``scrapy crawl``, checked by the same code (a bad one
exits 2 with one line, before Redis is touched). The queries are begun in the cluster's
frontier state and their page-1 requests built by the spider's own ``page_request`` and queued
as the workers queue theirs (page specs, through the shared dupefilter), so workers see exactly
what a seeding worker would have queued. No token is needed: nothing is sent. Starting a new
crawl also resets a concurrency limit the last one lowered.

The crawl is recorded in ``crawl_runs`` with its plan's fingerprint, so that once Redis lost it
(a restart without persistence, a flush), seeding the same plan again resumes it from MongoDB
(``_seed``) instead of paying for every page again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from scrapy.crawler import Crawler
from scrapy.spiderloader import get_spider_loader

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.cli import SpiderArguments
from tmapi_crawler.cluster_command import ClusterCommand, require_distributed
from tmapi_crawler.commands.crawl import check_before_start
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.frontier.replay import Replay, replay
from tmapi_crawler.quoting import shown
from tmapi_crawler.stats import Progress
from tmapi_crawler.storage.collections import REJECTED
from tmapi_crawler.storage.connection import StorageUnavailable
from tmapi_crawler.storage.coverage import losses
from tmapi_crawler.storage.ledger import Ledger, plan_fingerprint
from tmapi_crawler.storage.runs import record_resume, record_seeded, run_document
from tmapi_crawler.storage.store import ProductStore

if TYPE_CHECKING:
    import argparse

    from tmapi_crawler.distributed.cluster import Cluster
    from tmapi_crawler.frontier.decisions import Decision
    from tmapi_crawler.spiders.category_items import CategoryItemsSpider as Spider
    from tmapi_crawler.storage.ledger import Resume


#: How long a seed holds the crawl open without renewing (``Cluster.seeding``): a seed that died
#: stops holding it after that.
SEEDING_SECONDS = 60.0


class Command(SpiderArguments, ClusterCommand):
    def syntax(self) -> str:
        return "<spider> [-a NAME=VALUE ...]"

    def short_desc(self) -> str:
        return "Queue a crawl in Redis for distributed workers (sends nothing to the API)"

    def long_desc(self) -> str:
        return (
            "Validates the arguments and plan file exactly like `scrapy crawl`, then pushes the "
            "first page of every query into the shared queue. Starts a new cluster crawl if the "
            "previous one is over (complete, lost, or nothing queued or leased and no worker "
            "alive); otherwise adds to it. Prints the number of queries queued and the crawl id. "
            "A new cluster crawl of a plan whose last crawl was interrupted (e.g. Redis lost it) "
            "resumes it from MongoDB, queueing only the pages not stored yet; -a fresh=true "
            "starts a new crawl instead."
        )

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        require_distributed(self.settings, "seed")
        check_before_start(self.settings, args[0], opts.spargs, needs_token=False)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        spidercls = get_spider_loader(self.settings).load(args[0])
        crawler = Crawler(spidercls, self.settings)
        # The settings the add-ons derive (the query window) are the workers' too.
        crawler.addons.load_settings(crawler.settings)
        spider = spidercls.from_crawler(crawler, **opts.spargs)
        import redis  # noqa: PLC0415 - when the command runs (cluster_command)

        cluster = self.open_cluster(spider.name)
        try:
            seeded = asyncio.run(_seed(cluster, ProductStore.of(crawler), spider))
        except redis.RedisError as exc:
            print(f"error: Redis at {redact_url(cluster.url)}: {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        except (StorageUnavailable, PyMongoError) as exc:
            print(f"error: {shown(str(exc))}; nothing was queued", file=sys.stderr)
            self.exitcode = 1
            return
        if seeded.problem is not None:
            print(f"warning: Redis at {redact_url(cluster.url)}: {seeded.problem}; if it "
                  "restarts, the crawl is lost (workers stop with redis_state_lost): run it "
                  "with --appendonly yes", file=sys.stderr)
        where = f"at {redact_url(cluster.url)} ({cluster.keys.base})"
        if seeded.replayed is not None:
            print(f"resumed crawl {seeded.crawl_id}: {seeded.replayed.held} pages already held "
                  f"(replayed free, {seeded.replayed.saved} calls saved), {seeded.added} pages "
                  f"queued {where}")
            return
        known = seeded.total - seeded.added
        print(f"queued {seeded.added} of {seeded.total} queries"
              + (f" ({known} already in the crawl)" if known else "")
              + f" into {'new' if seeded.fresh else 'running'} crawl {seeded.crawl_id} {where}")


@dataclass(frozen=True, slots=True)
class Seeded:
    crawl_id: str
    #: Whether this seed started the cluster crawl (a new one, or a resumed one).
    fresh: bool
    #: Pages queued (first pages of queries, or a resume's pages left), of ``total`` queries.
    added: int
    total: int
    #: Why Redis would lose the crawl on a restart (no append-only file), if it would.
    problem: str | None
    #: What the replay of a resumed crawl's held pages decided; None for a crawl not resumed.
    replayed: Replay | None = None


async def _keep_seeding(cluster: Cluster, crawl_id: str) -> None:
    """Renew the seed's hold on the crawl until cancelled (a renewal Redis missed is retried
    at the next one; the seed's own calls report a Redis that is gone)."""
    import redis  # noqa: PLC0415 - as in run()

    while True:
        await asyncio.sleep(SEEDING_SECONDS / 3)
        with contextlib.suppress(redis.RedisError):
            await cluster.seeding(crawl_id, SEEDING_SECONDS)


def _snapshot(crawl_id: str, decisions: list[Decision], resume: Resume,
              rejected: list[int]) -> str:
    """The replay's progress counters and losses, shaped as a worker's
    (``distributed.keeper.Keeper.snapshot``): the categories of the held pages of unfiltered
    queries, and as incomplete those the replay's notes name, or where an item without an id
    was rejected before (the losses the lost crawl's workers had reported went with Redis)."""
    counted: Counter[str] = Counter()
    for decision in decisions:
        counted.update(decision.counters)
    noticed = {note.cat_id for decision in decisions for note in decision.notes
               if note.cat_id is not None} | {int(cat_id) for cat_id in rejected}
    stats: dict[str, Any] = {**counted, **{stats_keys.incomplete(c): 1 for c in noticed}}
    categories = {page.context.query.cat_id for page in resume.pages.values()
                  if not page.context.query.filters()}
    return json.dumps({**asdict(Progress.from_stats(stats)), "rate": 0.0, "state": "seeded",
                       "crawl_id": crawl_id, **losses(stats),
                       "categories": sorted(categories)})


async def _seed(cluster: Cluster, store: ProductStore, spider: Spider) -> Seeded:
    """Start, join or resume the cluster crawl, and queue what it is missing.

    A new cluster crawl of a plan whose last crawl (in ``crawl_runs``, local or cluster) was
    interrupted — Redis lost it, or its workers stopped and Redis was flushed since — resumes
    it: it begins under that crawl's id, the frontier is replayed over the pages the ledger
    holds (free) on the cluster's state, and only the pages the replay asks for that are not
    held are queued. ``-a fresh=true`` starts a new crawl instead, as locally.
    """
    from tmapi_crawler.distributed.queue import page_push  # noqa: PLC0415 - as redis in run()
    from tmapi_crawler.distributed.state import RedisState, ReplayState  # noqa: PLC0415

    settings = spider.crawler.settings
    queries = spider.plan.queries
    seeding: asyncio.Future[None] | None = None
    try:
        await store.open()
        resume = await Ledger.of(spider.crawler).open(
            store, plan_fingerprint(spider.plan, settings), spider.name, fresh=spider.fresh)
        crawl_id, fresh = await cluster.begin_crawl(
            renew=True, worker_info=None, crawl_id=resume.crawl_id if resume else None,
            seeding=SEEDING_SECONDS)
        # Workers waiting on the empty queue must not take it for the crawl's end meanwhile.
        seeding = asyncio.ensure_future(_keep_seeding(cluster, crawl_id))
        problem = await cluster.persistence()
        if resume is not None and (not fresh or crawl_id != resume.crawl_id):
            resume = None  # a crawl is running in Redis: this seed adds to it
        if resume is not None:
            await cluster.forget_page_memos(crawl_id)
            frontier = spider.build_frontier(ReplayState(cluster, crawl_id))
            planned = await frontier.plan(queries)
            replayed = await replay(frontier, planned, resume.pages)
            contexts = replayed.left
            rejected = await store.db[REJECTED].distinct(
                "context.cat_id", {"crawl_id": crawl_id, "item_id": None})
            # What the replay counted and noticed, as a worker reports it: the cluster's end
            # adds it up with the workers' (categories seen whole, progress counters).
            await cluster.exit(crawl_id, cluster.worker_info("seeded", crawl_id=crawl_id),
                               _snapshot(crawl_id, [planned, *replayed.decisions],
                                         resume, rejected))
        else:
            replayed = None
            if fresh:
                await record_seeded(store, run_document(crawl_id, spider, settings,
                                                        store.database))
            # The queries are begun in the cluster's frontier state, as a seeding worker begins
            # them, so the workers that answer their pages know they were; all are pushed (the
            # dupefilter keeps those already queued out), so a seed cut short can be run again.
            await spider.build_frontier(RedisState(cluster, lambda: crawl_id)).plan(queries)
            contexts = [PageContext(query) for query in queries]
        added = sum(await cluster.queue(crawl_id, None).push([
            page_push(spider.page_request(context), cluster.dupefilter) for context in contexts
        ]))
        seeding.cancel()
        await cluster.seeding(crawl_id, 0)
        if resume is not None and replayed is not None:
            await record_resume(store, resume, saved=replayed.saved, pages_queued=added)
    finally:
        if seeding is not None:
            seeding.cancel()
        await cluster.aclose()
        await store.close()
    return Seeded(crawl_id, fresh, added, len(queries), problem, replayed)
