"""``scrapy crawl`` that refuses bad input before anything is sent, and says how it ended.

Arguments and the token are checked with the same code the spider and the transport use, so
a mistake ends the run with one line on stderr and exit status 2, before the crawler (or
even its logging) starts; a crawl that closed for any reason other than ``finished`` exits 1,
so scripts can tell a complete crawl from a stopped one.
"""

from __future__ import annotations

import argparse
import sys

from scrapy import signals
from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings
from scrapy.spiderloader import get_spider_loader

from settings_profiles import SCRAPYD_JOB, apply_profile
from tmapi_crawler.plan import PlanError
from tmapi_crawler.transport.credentials import MissingToken, token_from_settings

USAGE_ERROR = 2


def check_before_start(
    settings: BaseSettings,
    spider_name: str,
    spargs: dict,
    *,
    arguments_optional: bool = False,
    needs_token: bool = True,
) -> None:
    """Exit with one line if the spider's arguments or the API settings are unusable.

    ``arguments_optional``: a distributed worker without arguments crawls what was seeded.
    ``needs_token``: ``scrapy seed`` only queues requests, it never calls the API.
    """
    spidercls = get_spider_loader(settings).load(spider_name)
    try:
        check = getattr(spidercls, "check_arguments", None)
        if check is not None and (spargs or not arguments_optional):
            check(spargs)
        if needs_token:
            token_from_settings(settings)
    except (PlanError, MissingToken) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


class Command(ScrapyCrawlCommand):
    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        if len(args) != 1:
            raise UsageError("give exactly one spider name")
        assert self.settings is not None
        apply_profile(self.settings)  # a Scrapyd job picks its profile with a setting
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
