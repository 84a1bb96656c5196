"""What the cluster commands (``scrapy seed``, ``scrapy status``) share.

Kept outside ``tmapi_crawler.commands``: Scrapy takes every command class defined there for a
command of its own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyCommand

from settings_profiles import apply_profile
from tmapi_crawler.commands.crawl import USAGE_ERROR
from tmapi_crawler.distributed.cluster import Cluster, ClusterSettingsError

if TYPE_CHECKING:
    import argparse

    from scrapy.settings import BaseSettings


def require_distributed(settings: BaseSettings, command: str) -> None:
    """Exit 2 with one line when the profile has no shared queue to work on."""
    if not settings.getbool("TMAPI_DISTRIBUTED"):
        print(f"error: scrapy {command} needs the shared queue of the distributed profile "
              "(run it with SCRAPY_PROJECT=distributed)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


class ClusterCommand(ScrapyCommand):
    """A command that talks to the cluster's Redis only: no crawler, no log."""

    requires_project = True
    requires_crawler_process = False
    default_settings: dict[str, Any] = {"LOG_ENABLED": False}

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        apply_profile(self.settings)

    def open_cluster(self, spider_name: str) -> Cluster:
        """The cluster of ``spider_name``, or exit 2 with one line on bad settings; the
        command closes it (``Cluster.aclose``) inside the event loop it used."""
        assert self.settings is not None
        try:
            return Cluster(self.settings, spider_name)
        except ClusterSettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None
