"""What the cluster commands (``scrapy seed``, ``scrapy status``) share.

Kept outside ``tmapi_crawler.commands``: Scrapy takes every command class defined there for a
command of its own. Scrapy imports every command to list them, ``scrapy crawl`` too: what needs
redis-py is imported when a cluster command runs, not before (BENCHMARKS.md, B12).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tmapi_crawler.cli import USAGE_ERROR, ProjectCommand, fail
from tmapi_crawler.distributed.embedded import resolve_redis_url
from tmapi_crawler.servers import EmbeddedServerError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from tmapi_crawler.distributed.cluster import Cluster


def require_distributed(settings: BaseSettings, command: str) -> None:
    """Exit 2 with one line when the profile has no shared queue to work on."""
    if not settings.getbool("TMAPI_DISTRIBUTED"):
        fail(f"scrapy {command} needs the shared queue of the distributed profile "
             "(run it with SCRAPY_PROJECT=distributed)")


class ClusterCommand(ProjectCommand):
    """A command that talks to the cluster's Redis only: no crawler, no log."""

    requires_project = True
    requires_crawler_process = False
    default_settings: dict[str, Any] = {"LOG_ENABLED": False}

    def open_cluster(self, spider_name: str) -> Cluster:
        """The cluster of ``spider_name``, or exit 2 with one line on bad settings; the
        command closes it (``Cluster.aclose``) inside the event loop it used."""
        from tmapi_crawler.distributed.cluster import (  # noqa: PLC0415 - see the docstring
            Cluster,
            ClusterSettingsError,
        )

        assert self.settings is not None
        if not self.settings.get("REDIS_URL"):
            try:
                url = resolve_redis_url(self.settings, start=False)
            except EmbeddedServerError as exc:
                fail(str(exc), 1)
            self.settings.set("REDIS_URL", url, priority="cmdline")
        try:
            return Cluster(self.settings, spider_name)
        except ClusterSettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None
