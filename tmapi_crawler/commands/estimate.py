"""``scrapy estimate <spider> -a ... [--probe]``: the calls a crawl of these arguments will
probably take.

Same arguments and plan files as ``scrapy crawl``, checked by the same code (exit 2 on bad
input). Free by default: the figures come from earlier finished crawls of the same queries in
MongoDB (``spend.estimate``), each with its age; a query none of them had is shown as unknown.
It reads the database without starting it, like ``scrapy report``.

``--probe`` pays one call per planned query, said before it is sent: it runs the crawl itself
in probe mode (same spider, transport, writer, ledger and run record; page 1 of each planned
query, nothing more), which ends ``tmapi_probed`` — so the next ``scrapy crawl`` with the same
arguments resumes it and pays for none of those pages again. The token is needed then, and the
crawl is local (a cluster crawl is resumed through ``scrapy seed``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

import pymongo
from pymongo.errors import PyMongoError
from scrapy.settings import SETTINGS_PRIORITIES

from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.cli import ProjectCommand, SpiderArguments, fail, note
from tmapi_crawler.closing import PROBED
from tmapi_crawler.commands.crawl import check_before_start, summary_line
from tmapi_crawler.commands.report import locate_database
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.plan import Plan, plan_from_arguments
from tmapi_crawler.server_command import redact
from tmapi_crawler.shell import command_line
from tmapi_crawler.spend import estimate
from tmapi_crawler.storage.ledger import FRESH_ARGUMENT, fresh_requested, plan_fingerprint

if TYPE_CHECKING:
    import argparse

    from tmapi_crawler.frontier.decisions import FrontierSettings
    from tmapi_crawler.frontier.summary import PageSummary


class Command(SpiderArguments, ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "<spider> [-a NAME=VALUE ...] [--probe]"

    def short_desc(self) -> str:
        return "The API calls a crawl will probably take, from earlier crawls (free) or a probe"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--probe", action="store_true",
                            help="pay one call per planned query (its page 1) to estimate "
                                 "from; the crawl with the same arguments reuses those pages")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        if opts.probe and self.settings.getbool("TMAPI_DISTRIBUTED"):
            fail("--probe runs a local crawl: use it without the distributed profile")
        check_before_start(self.settings, args[0], opts.spargs, needs_token=opts.probe)
        if opts.probe:
            self.requires_crawler_process = True
            # The probe is a crawl: its warnings and errors are shown (-L and --nolog rule).
            self.settings.set("LOG_ENABLED", True, priority="command")
            if self.settings.getpriority("LOG_LEVEL") < SETTINGS_PRIORITIES["cmdline"]:
                self.settings.set("LOG_LEVEL", "WARNING", priority="cmdline")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        plan = plan_from_arguments({k: v for k, v in opts.spargs.items()
                                    if k != FRESH_ARGUMENT})
        probed: dict[str, estimate.Figure] = {}
        probe_crawl = None
        resume = None
        if opts.probe:
            probed, probe_crawl = self._probe(args[0], opts.spargs, plan)
        located = locate_database(self.settings)
        if isinstance(located, str):
            figures = [estimate.Figure(q) for q in plan.queries]
            where = "no database"
        else:
            uri, where = located
            database = self.settings.get("MONGO_DATABASE")
            where = f"{where}, database {database!r}"
            try:
                with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000,
                                         tz_aware=True) as client:
                    figures = estimate.from_history(client[database], plan.queries)
                    if not fresh_requested(opts.spargs):
                        resume = estimate.pending(client[database],
                                                  plan_fingerprint(plan, self.settings), args[0])
            except PyMongoError as exc:
                note(f"error: MongoDB at {redact(uri)}: {exc}")
                self.exitcode = 1
                return
        figures = [probed.get(PageContext(f.query).key, f) for f in figures]
        print(estimate.report(figures, where, probe=probe_crawl, resume=resume))
        if isinstance(located, str) and not opts.probe:
            note(f"note: {located}")
        if probe_crawl is not None and self.exitcode == 0:
            again = [word for name, value in opts.spargs.items() if name != FRESH_ARGUMENT
                     for word in ("-a", f"{name}={value}")]
            note(f"Next: {command_line('crawl', args[0], *again, profile=True)} resumes crawl "
                 f"{probe_crawl} and pays for none of these page 1s again")

    def _probe(self, spider: str, spargs: dict[str, Any],
               plan: Plan) -> tuple[dict[str, estimate.Figure], str | None]:
        """Run the probe crawl; the figures of the page 1s it holds, and its crawl id."""
        assert self.crawler_process is not None
        crawler = self.crawler_process.create_crawler(spider)

        def planned(calls: int, held: int) -> None:
            already = f" ({held} held already by the crawl it resumes)" if held else ""
            note(f"Probe: {calls} paid API calls now (and a retry's, if the API asks for one): "
                 f"page 1 of each of {calls + held} planned queries{already}; the crawl with "
                 "the same arguments reuses them")

        crawler.signals.connect(planned, signal=tmapi_signals.probe_planned)
        self.crawler_process.crawl(crawler, probe=True, **spargs)
        self.crawler_process.start()
        assert crawler.stats is not None
        stats = crawler.stats.get_stats()
        reason = stats.get("finish_reason")
        crawl_id = stats.get(stats_keys.CRAWL_ID)
        note(summary_line(stats, None))
        if reason != PROBED:
            note(f"error: the probe stopped ({reason}) after "
                 f"{stats.get(stats_keys.COST_PROBES, 0)} paid calls; the queries it did not "
                 "probe are estimated from earlier crawls")
            self.exitcode = 1
        frontier = getattr(crawler.spider, "frontier", None)
        summaries: dict[str, PageSummary] = getattr(frontier, "probed", {})
        if frontier is None or not summaries:
            return {}, crawl_id
        return asyncio.run(_figures(frontier.settings, plan, summaries)), crawl_id


async def _figures(settings: FrontierSettings, plan: Plan,
                   summaries: dict[str, PageSummary]) -> dict[str, estimate.Figure]:
    figures = {}
    for query in plan.queries:
        key = PageContext(query).key
        if key in summaries:
            figures[key] = await estimate.from_probe(settings, query, summaries[key])
    return figures
