"""``scrapy crawl`` that refuses bad input before anything is sent, and says how it ended.

Settings, arguments and the token are checked with the same code the spider and the transport
use, so a mistake ends the run with one line on stderr and exit status 2, before the crawler
(or even its logging) starts; so does a missing database server binary (exit 1). A crawl that
closed for any reason other than ``finished`` exits 1, so scripts can tell a complete crawl
from a stopped one. When the log does not go to the terminal (``--nolog``, ``LOG_FILE``), one
summary line on stderr says how the crawl ended.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from scrapy import signals
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings
from scrapy.spiderloader import get_spider_loader

from settings_profiles import SCRAPYD_JOB
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.cli import INCOMPLETE, USAGE_ERROR, ProjectCommand, fail
from tmapi_crawler.distributed.embedded import resolve_redis_url
from tmapi_crawler.plan import PlanError
from tmapi_crawler.servers import EmbeddedServerError, ServerNotFound, find_mongod
from tmapi_crawler.storage.cost import cost_of, format_cost
from tmapi_crawler.transport.credentials import MissingToken, token_from_settings

logger = logging.getLogger(__name__)
__all__ = ["USAGE_ERROR", "Command", "check_before_start", "summary_line"]
#: Exit status of a crawl that could not start for want of a server (not a usage error).
ENVIRONMENT_ERROR = 1


def check_before_start(
    settings: BaseSettings,
    spider_name: str,
    spargs: dict,
    *,
    arguments_optional: bool = False,
    needs_token: bool = True,
) -> None:
    """Exit with one line if the spider's arguments, the API settings or the servers are
    unusable; in the distributed profile without ``REDIS_URL``, start the embedded Redis.

    ``arguments_optional``: a distributed worker without arguments crawls what was seeded.
    ``needs_token``: ``scrapy seed`` only queues requests, it never calls the API.
    """
    try:
        spidercls = get_spider_loader(settings).load(spider_name)
    except KeyError as exc:
        fail(str(exc).strip("\"'"))
    try:
        check = getattr(spidercls, "check_arguments", None)
        if check is not None and (spargs or not arguments_optional):
            check(spargs)
        if needs_token:
            token_from_settings(settings)
    except (PlanError, MissingToken) as exc:
        fail(str(exc))
    try:
        if not settings.get("MONGO_URI"):
            find_mongod()
        if settings.getbool("TMAPI_DISTRIBUTED") and not settings.get("REDIS_URL"):
            # Every worker and `scrapy status` must find the same server: resolve it once here.
            settings.set("REDIS_URL", resolve_redis_url(settings, start=True), priority="cmdline")
    except (ServerNotFound, EmbeddedServerError) as exc:
        fail(str(exc), ENVIRONMENT_ERROR)


def summary_line(stats: dict[str, Any], log_file: str | None) -> str:
    """How the crawl ended, in one line: what it cost, what it found, what it stored."""
    reason = stats.get("finish_reason", "not started")
    elapsed = stats.get("elapsed_time_seconds")
    # A cluster worker's wait with nothing left before it closed is no part of the crawl.
    idle = stats.get(stats_keys.DISTRIBUTED_IDLE, 0)
    took = f" in {elapsed - idle:.1f} s" if isinstance(elapsed, int | float) else ""
    crawl_id = stats.get(stats_keys.CRAWL_ID)
    head = f"crawl {crawl_id}" if crawl_id else "crawl"
    head += f" finished{took}" if reason == "finished" else f" stopped ({reason}){took}"
    pages = stats.get(stats_keys.PAGES, 0)
    failed = stats.get(stats_keys.PAGES_FAILED, 0)
    parts = [
        format_cost(cost_of(stats, stats.get(stats_keys.product_count("products_seen")))),
        f"{pages} pages" + (f" ({failed} given up)" if failed else ""),
    ]
    # The crawl's products are counted over all its runs: so are the sightings beside them.
    sightings = stats.get(stats_keys.CRAWL_SIGHTINGS, stats.get(stats_keys.ITEMS, 0))
    seen = stats.get(stats_keys.product_count("products_seen"))
    if seen is None:
        parts.append(f"{sightings} product sightings")
    else:
        new = stats.get(stats_keys.product_count("new"), 0)
        parts.append(f"{sightings} sightings of {seen} products ({new} new, "
                     f"{seen - new} seen before)")
    parts.append(f"{stats.get(stats_keys.ITEMS_REJECTED, 0)} rejected")
    line = f"{head}: {', '.join(parts)}"
    if stats.get(stats_keys.COMPLETENESS_INCOMPLETE):
        line += f"; incomplete: categories {stats[stats_keys.COMPLETENESS_INCOMPLETE]}"
    return f"{line}; log in {log_file}" if log_file else line


class Command(ProjectCommand, ScrapyCrawlCommand):
    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        if len(args) != 1:
            raise UsageError("give exactly one spider name")
        assert self.settings is not None
        opts.spargs.pop(SCRAPYD_JOB, None)
        check_before_start(self.settings, args[0], opts.spargs,
                           arguments_optional=self.settings.getbool("TMAPI_DISTRIBUTED"))

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.crawler_process is not None
        crawler = self._create_crawler(args[0])
        reasons: list[str] = []

        def closed(reason: str) -> None:
            reasons.append(reason)

        crawler.signals.connect(closed, signals.spider_closed)
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed or reasons != ["finished"]:
            self.exitcode = 1
        elif crawler.stats is not None and \
                crawler.stats.get_value(stats_keys.COMPLETENESS_COMPLETE) is False:
            self.exitcode = INCOMPLETE
        settings = crawler.settings
        log_file = settings.get("LOG_FILE")
        assert crawler.stats is not None
        if not settings.getbool("LOG_ENABLED") or log_file:
            print(summary_line(crawler.stats.get_stats(), log_file), file=sys.stderr)
        if settings.getbool("LOG_ENABLED"):
            logger.info("%s", summary_line(crawler.stats.get_stats(), None))
