"""``scrapy seed``: queue a crawl's queries for distributed workers, without calling the API.

Takes the same arguments and plan files as ``scrapy crawl``, checked by the same code (a bad one
exits 2 with one line, before Redis is touched). The queries are begun in the cluster's
frontier state and their page-1 requests built by the spider's own ``page_request`` and queued
as the workers queue theirs (page specs, through the shared dupefilter), so workers see exactly
what a seeding worker would have queued. No token is needed: nothing is sent. Starting a new
crawl also resets a concurrency limit the last one lowered.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import redis
from scrapy.crawler import Crawler
from scrapy.spiderloader import get_spider_loader

from tmapi_crawler.cli import SpiderArguments
from tmapi_crawler.commands.crawl import check_before_start
from tmapi_crawler.distributed.command import ClusterCommand, require_distributed
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.distributed.queue import page_push
from tmapi_crawler.distributed.state import RedisState
from tmapi_crawler.frontier.context import PageContext

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider

    from tmapi_crawler.distributed.cluster import Cluster


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
            "alive); otherwise adds to it. Prints the number of queries queued and the crawl id."
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
        cluster = self.open_cluster(spider.name)
        try:
            crawl_id, fresh, added, total, problem = asyncio.run(_seed(cluster, spider))
        except redis.RedisError as exc:
            print(f"error: Redis at {redact_url(cluster.url)}: {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        if problem is not None:
            print(f"warning: Redis at {redact_url(cluster.url)}: {problem}; if it restarts, the "
                  "crawl is lost (workers stop with redis_state_lost): run it with "
                  "--appendonly yes", file=sys.stderr)
        known = total - added
        print(f"queued {added} of {total} queries"
              + (f" ({known} already in the crawl)" if known else "")
              + f" into {'new' if fresh else 'running'} crawl {crawl_id} "
              f"at {redact_url(cluster.url)} ({cluster.keys.base})")


async def _seed(cluster: Cluster, spider: Spider) -> tuple[str, bool, int, int, str | None]:
    """(crawl id, whether it is new, queries queued, queries given, persistence problem)."""
    try:
        crawl_id, fresh = await cluster.begin_crawl(renew=True, worker_info=None)
        problem = await cluster.persistence()
        queries = spider.plan.queries
        # The queries are begun in the cluster's frontier state, as a seeding worker begins
        # them, so the workers that answer their pages know they were; all are pushed (the
        # dupefilter keeps those already queued out), so a seed cut short can be run again.
        await spider.build_frontier(RedisState(cluster, lambda: crawl_id)).plan(queries)
        added = await cluster.queue(crawl_id, None).push([
            page_push(spider.page_request(PageContext(query)), cluster.dupefilter)
            for query in queries
        ])
    finally:
        await cluster.aclose()
    return crawl_id, fresh, sum(added), len(queries), problem
