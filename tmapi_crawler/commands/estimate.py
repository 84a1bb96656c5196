"""``scrapy estimate <spider> -a ...``: the calls a crawl of these arguments will probably take.

Same arguments and plan files as ``scrapy crawl``, checked by the same code (exit 2 on bad
input). Free: the figures come from earlier finished crawls of the same queries in MongoDB
(``spend.estimate``), each with its age; a query none of them had is shown as unknown. It
reads the database without starting it, like ``scrapy report``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pymongo
from pymongo.errors import PyMongoError

from tmapi_crawler.cli import ProjectCommand, SpiderArguments, note
from tmapi_crawler.commands.crawl import check_before_start
from tmapi_crawler.commands.report import locate_database
from tmapi_crawler.plan import plan_from_arguments
from tmapi_crawler.server_command import redact
from tmapi_crawler.spend import estimate
from tmapi_crawler.spend.ledger import FRESH_ARGUMENT

if TYPE_CHECKING:
    import argparse


class Command(SpiderArguments, ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "<spider> [-a NAME=VALUE ...]"

    def short_desc(self) -> str:
        return "The API calls a crawl will probably take, from earlier crawls (free)"

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        check_before_start(self.settings, args[0], opts.spargs, needs_token=False)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        plan = plan_from_arguments({k: v for k, v in opts.spargs.items()
                                    if k != FRESH_ARGUMENT})
        located = locate_database(self.settings)
        if isinstance(located, str):
            print(estimate.report([estimate.Figure(q) for q in plan.queries], "no database"))
            note(f"note: {located}")
            return
        uri, where = located
        database = self.settings.get("MONGO_DATABASE")
        try:
            with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True) as client:
                figures = estimate.from_history(client[database], plan.queries)
        except PyMongoError as exc:
            note(f"error: MongoDB at {redact(uri)}: {exc}")
            self.exitcode = 1
            return
        print(estimate.report(figures, f"{where}, database {database!r}"))
