"""Names of the Redis keys a cluster shares; the layout is described in the package docstring."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CrawlKeys:
    """Keys of one spider's cluster crawl, under ``<prefix>:<spider>``."""

    base: str

    @property
    def queue(self) -> str:
        return f"{self.base}:requests"

    @property
    def dupefilter(self) -> str:
        return f"{self.base}:dupefilter"

    @property
    def crawl(self) -> str:
        return f"{self.base}:crawl"

    @property
    def workers(self) -> str:
        return f"{self.base}:workers"

    @property
    def entries(self) -> str:
        return f"{self.base}:entries"

    @property
    def done(self) -> str:
        return f"{self.base}:done"

    @property
    def failed(self) -> str:
        return f"{self.base}:failed"

    @property
    def deliveries(self) -> str:
        return f"{self.base}:deliveries"

    @property
    def progress(self) -> str:
        return f"{self.base}:progress"

    @property
    def budget(self) -> str:
        """The cluster crawl's count of paid calls against ``TMAPI_MAX_REQUESTS``."""
        return f"{self.base}:budget"

    @property
    def sightings(self) -> str:
        return f"{self.base}:sightings"

    @property
    def frontier(self) -> str:
        return f"{self.base}:frontier"

    @property
    def frontier_sets(self) -> str:
        return f"{self.base}:frontier:sets"

    def frontier_ids(self, key: str) -> str:
        return f"{self.base}:frontier:ids:{key}"

    def frontier_step(self, step: str) -> str:
        return f"{self.base}:frontier:step:{step}"

    def frontier_page(self, crawl_id: str, page: str) -> str:
        """How a page was decided (``PageContext.key``), until it is acknowledged."""
        return f"{self.base}:frontier:page:{crawl_id}:{page}"

    def alive(self, worker: str) -> str:
        return f"{self.base}:alive:{worker}"

    def leases(self, worker: str) -> str:
        return f"{self.base}:leases:{worker}"


@dataclass(frozen=True, slots=True)
class LimiterKeys:
    """Keys of the account-wide limiter, under ``<prefix>:limiter``: every spider shares it."""

    base: str

    @property
    def epoch(self) -> str:
        return f"{self.base}:epoch"

    @property
    def permits(self) -> str:
        return f"{self.base}:permits"

    @property
    def limit(self) -> str:
        return f"{self.base}:limit"

    @property
    def successes(self) -> str:
        return f"{self.base}:successes"

    @property
    def stop(self) -> str:
        return f"{self.base}:stop"

    @property
    def waiting(self) -> str:
        return f"{self.base}:waiting"

    @property
    def released_channel(self) -> str:
        return f"{self.base}:released"

    @property
    def stopped_channel(self) -> str:
        return f"{self.base}:stopped"


def redact_url(url: str) -> str:
    """A Redis URL without its password, for messages."""
    return re.sub(r"(?<=://)[^@/]*@", "***@", url)
