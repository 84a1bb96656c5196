"""``scrapy seed``: queue a crawl's queries for distributed workers, without calling the API.

Takes the same arguments and plan files as ``scrapy crawl``, checked by the same code (a bad one
exits 2 with one line, before Redis is touched). The page-1 requests are built by the spider's
own ``page_request`` and pushed through the workers' queue and dupefilter code, so workers see
exactly the requests a seeding worker would have queued. No token is needed: nothing is sent.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import redis
from scrapy.crawler import Crawler
from scrapy.exceptions import UsageError
from scrapy.spiderloader import get_spider_loader
from scrapy.utils.conf import arglist_to_dict

from tmapi_crawler.commands.crawl import check_before_start
from tmapi_crawler.distributed.command import ClusterCommand, require_distributed
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.frontier.context import PageContext

if TYPE_CHECKING:
    import argparse



class Command(ClusterCommand):
    def syntax(self) -> str:
        return "<spider> [-a NAME=VALUE ...]"

    def short_desc(self) -> str:
        return "Queue a crawl in Redis for distributed workers (sends nothing to the API)"

    def long_desc(self) -> str:
        return (
            "Validates the arguments and plan file exactly like `scrapy crawl`, then pushes the "
            "first page of every query into the shared queue. Starts a new cluster crawl if the "
            "previous one is over (nothing queued or leased, no worker alive); otherwise adds to "
            "it. Prints the number of queries queued and the crawl id."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-a", dest="spargs", action="append", default=[],
                            metavar="NAME=VALUE", help="spider argument (may be repeated)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        try:
            opts.spargs = arglist_to_dict(opts.spargs)
        except ValueError:
            raise UsageError("Invalid -a value, use -a NAME=VALUE", print_help=False) from None
        if len(args) != 1:
            raise UsageError("give exactly one spider name")
        assert self.settings is not None
        require_distributed(self.settings, "seed")
        check_before_start(self.settings, args[0], opts.spargs, needs_token=False)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        spidercls = get_spider_loader(self.settings).load(args[0])
        spider = spidercls.from_crawler(Crawler(spidercls, self.settings), **opts.spargs)
        cluster = self.open_cluster(spider.name)
        try:
            crawl_id, fresh = cluster.begin_crawl(renew=True, worker_info=None)
            queue, dupefilter = cluster.open_queue(spider, worker=None), cluster.dupefilter()
            queries = spider.plan.queries
            added = sum(
                queue.push_unique(spider.page_request(PageContext(query)), dupefilter)
                for query in queries
            )
        except redis.RedisError as exc:
            print(f"error: Redis at {redact_url(cluster.url)}: {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        finally:
            cluster.close()
        known = len(queries) - added
        print(f"queued {added} of {len(queries)} queries"
              + (f" ({known} already in the crawl)" if known else "")
              + f" into {'new' if fresh else 'running'} crawl {crawl_id} "
              f"at {redact_url(cluster.url)} ({cluster.keys.base})")
