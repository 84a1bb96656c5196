"""``scrapy status``: how far the distributed crawl got, from Redis alone.

Read-only, so it is safe to run any time and from anywhere: queued, in flight (leased by live
workers, and by dead ones until the others take them back), done, failed (refused entries
among them), the workers seen with their last heartbeat, the cluster-wide stop flag, the shared
concurrency limit, and the crawl's progress line (pages, items, answers, rate, ETA) — all read
at one moment by ``distributed.status``, which the workers' progress lines use too.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import UsageError
from scrapy.spiderloader import get_spider_loader

from tmapi_crawler.cluster_command import ClusterCommand, require_distributed
from tmapi_crawler.commands.crawl import USAGE_ERROR
from tmapi_crawler.distributed.keys import redact_url

if TYPE_CHECKING:
    import argparse

    from tmapi_crawler.distributed.cluster import Cluster


class Command(ClusterCommand):
    def syntax(self) -> str:
        return "<spider> [--json]"

    def short_desc(self) -> str:
        return "Show the distributed crawl's progress: queued, in flight, done, failed, workers"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give exactly one spider name")
        assert self.settings is not None
        require_distributed(self.settings, "status")
        try:
            name = get_spider_loader(self.settings).load(args[0]).name
        except KeyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None
        import redis  # noqa: PLC0415 - when the command runs (cluster_command)

        cluster = self.open_cluster(name)
        try:
            status = asyncio.run(_read(cluster))
        except redis.RedisError as exc:
            print(f"error: Redis at {redact_url(cluster.url)}: {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        print(json.dumps(status, indent=1) if opts.json else describe(status))


async def _read(cluster: Cluster) -> dict[str, Any]:
    from tmapi_crawler.distributed.status import read_status  # noqa: PLC0415 - as redis

    try:
        return await read_status(cluster)
    finally:
        await cluster.aclose()


def describe(status: dict[str, Any]) -> str:
    """The status for people, one fact per line."""
    if status["crawl_id"] is None:
        return f"no crawl in {status['redis']} under {status['key']}"
    progress = status["progress"]
    lines = [
        f"crawl {status['crawl_id']}: {status['state']}  ({status['redis']}, {status['key']})",
        f"  queued     {status['queued']}",
        f"  in flight  {status['in_flight']}"
        + (f" (+{status['in_flight_lost']} held by lost workers, returning)"
           if status["in_flight_lost"] else ""),
        f"  done       {status['done']}",
        f"  failed     {status['failed']}"
        + (f" ({status['refused']} refused entries)" if status["refused"] else ""),
        f"  pages      {status['cluster_progress']['pages_done']} of {status['known']} known"
        + (f" ({progress:.1%})" if progress is not None else ""),
    ]
    if status.get("completeness"):
        lines.append(f"  read       {status['completeness']}")
    if status["missing"]:
        lines.append(f"  missing    {status['missing']} queued entries Redis lost")
    stop = status["stop"]
    lines.append(f"  stop flag  {stop['reason']}, set {stop['age']:.0f} s ago" if stop
                 else "  stop flag  none")
    limiter = status["limiter"]
    lines.append(f"  limiter    {limiter['permits_in_use']} permits in use, limit "
                 + (f"lowered to {limiter['limit']}" if limiter["limit"] else "at maximum"))
    lines.append(f"  progress   {status['cluster_progress']['line']}")
    lines.append(f"  workers    {len(status['workers'])} seen")
    for worker in status["workers"]:
        ended = f" ({worker['finish_reason']})" if worker["finish_reason"] else ""
        lines.append(f"    {worker['id']}: {worker['state']}{ended}, {worker['leased']} leased, "
                     f"last heartbeat {worker['last_seen_age']:.1f} s ago")
    return "\n".join(lines)
