"""The budget of paid calls (``TMAPI_MAX_REQUESTS``; 0: none).

The transport asks the budget right before each call, after its permit, so every call counts,
retries included, and a call the budget refuses is never sent: the page fails as the
resumable ``not_sent`` and the crawl closes with ``tmapi_budget_exhausted``.

``TMAPI_BUDGET`` names the class: :class:`LocalBudget` counts this process's calls,
``distributed.budget.RedisBudget`` one atomic counter for the cluster crawl. Both implement
:class:`Budget`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class Budget(Protocol):
    """What the transport and the progress line need from a budget."""

    #: ``TMAPI_MAX_REQUESTS``: 0 for no budget.
    maximum: int

    async def spend(self) -> bool:
        """Take one call from the budget; False (and nothing taken) when it is spent.

        Raises ``LimiterClosed`` when a shared budget learns the crawl stopped for another
        reason (the limiter closes it with that reason)."""

    @property
    def left(self) -> int | None:
        """Calls left, as last known; None without a budget."""


class LocalBudget:
    """This process's calls."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LocalBudget:
        return cls(crawler.settings.getint("TMAPI_MAX_REQUESTS"))

    def __init__(self, maximum: int) -> None:
        if maximum < 0:
            raise ValueError("TMAPI_MAX_REQUESTS must be 0 (no budget) or more")
        self.maximum = maximum
        self.spent = 0

    async def spend(self) -> bool:
        if self.maximum and self.spent >= self.maximum:
            return False
        self.spent += 1
        return True

    @property
    def left(self) -> int | None:
        return self.maximum - self.spent if self.maximum else None
