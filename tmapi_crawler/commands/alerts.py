"""``scrapy alerts test``: one sample message to every ``notify`` URL of ``TMAPI_ALERTS_FILE``.

So a user finds a wrong bot token or webhook before a crawl's alerts are lost to it. Each URL is
reported by its service name only (URLs carry secrets); the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from scrapy.exceptions import UsageError

from tmapi_crawler.alerts.deliver import send
from tmapi_crawler.alerts.rules import load, service_of
from tmapi_crawler.cli import ProjectCommand, fail

SAMPLE_TITLE = "tmapi: test alert"
SAMPLE_BODY = ("A sample message from scrapy alerts test: this service will get the alerts "
               "of TMAPI_ALERTS_FILE when a crawl ends.")


class Command(ProjectCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "test"

    def short_desc(self) -> str:
        return "Send a sample alert to every notify URL of TMAPI_ALERTS_FILE, say which worked"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if args != ["test"]:
            raise UsageError("expected: test")
        path = self.settings.get("TMAPI_ALERTS_FILE")
        if not path:
            fail("TMAPI_ALERTS_FILE is not set: name the alerts file (README, \"Alerts\")")
        urls = load(path).notify  # checked already, with the other settings
        timeout = self.settings.getfloat("TMAPI_ALERTS_TIMEOUT")
        delivered = send([(url, SAMPLE_TITLE, SAMPLE_BODY) for url in urls], timeout)
        for position, (url, ok) in enumerate(zip(urls, delivered, strict=True), 1):
            state = "ok" if ok else f"FAILED (not delivered within {timeout:g} s)"
            print(f"{position}. {service_of(url)}: {state}")
        if not all(delivered):
            self.exitcode = 1
