"""Where a long crawl is: a progress line in the log, a live bar on a terminal, a Redis snapshot.

Everything is read from the stats on a timer, never per item or per page, so it costs next to
nothing; ``TMAPI_PROGRESS_INTERVAL = 0`` turns it off entirely. The numbers:

* queries done / planned (``tmapi/queries/done``, ``tmapi/queries``);
* pages done / known (``tmapi/pages`` + ``tmapi/pages/failed``, and the pages a resume holds,
  ``tmapi/resume/pages_held``, / ``tmapi/pages/known``); a finished crawl's closing line has
  done all its pages, the known ones it did not need (a query that ended sooner) left out;
* product sightings yielded, and of those stored: new products (``tmapi/db/created``) and
  repeats, sightings of products already stored (the rest of ``tmapi/db/sightings``), and
  rejected (``tmapi/items/rejected``);
* API answers by code (``tmapi/answers/<code>``);
* pages per second over the last ``stats.RATE_WINDOW`` seconds, and the ETA of the known pages left.

A distributed worker logs the cluster's line instead, as ``scrapy status`` shows it (its
scheduler's ``progress_line``): one worker's own share of a shared crawl tells nothing about
when the crawl ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Self, TextIO

from scrapy import signals
from scrapy.exceptions import NotConfigured

from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import FINISHED
from tmapi_crawler.stats import Progress, Rate

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

#: How often the bar is redrawn (2 Hz).
BAR_PERIOD = 0.5
BAR_CELLS = 20
_CLEAR_LINE = "\r\x1b[K"


def eta_seconds(progress: Progress, rate: float) -> float | None:
    """Seconds until the known pages are done at ``rate``; None when it cannot be told."""
    left = progress.pages_left
    if left is None:
        return None
    if left == 0:
        return 0.0
    return left / rate if rate > 0 else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _of(done: int, total: int) -> str:
    return f"{done}/{total or '?'}"


def _calls(progress: Progress) -> str:
    """Calls spent, and the budget left (a cluster's: as its workers' counts add up)."""
    if not progress.budget:
        return f"calls {progress.calls}"
    return (f"calls {progress.calls}, budget {progress.budget}, "
            f"{max(progress.budget - progress.calls, 0)} left")


def format_line(progress: Progress, rate: float | None, eta: float | None, *,
                final: bool = False) -> str:
    """The log's progress line, e.g.
    ``queries 3/10 | pages 120/340 (35.3%), 2 failed | sightings 2400: 1100 new products,
    1290 repeats, 10 rejected | answers 200:125 417:3 | 12.5 pages/s | ETA 0:00:17``.

    A sighting is a product on a page; "new products" were first stored by it, "repeats" are
    sightings of products already stored (earlier in this crawl, or by an earlier one).

    ``final`` leaves the ETA out: nothing is left to wait for; ``rate`` None leaves the rate
    out (a crawl that ended has none).
    """
    pages = f"pages {_of(progress.pages_done, progress.pages_known)}"
    if progress.pages_known:
        pages += f" ({progress.pages_done / progress.pages_known:.1%})"
    if progress.pages_failed:
        pages += f", {progress.pages_failed} failed"
    answers = " ".join(f"{code}:{n}" for code, n in sorted(progress.answers.items())) or "none"
    parts = [
        f"queries {_of(progress.queries_done, progress.queries)}",
        pages,
        f"sightings {progress.items}: {progress.new} new products, {progress.updated} repeats, "
        f"{progress.rejected} rejected",
        f"answers {answers}",
        _calls(progress),
        *([] if rate is None else [f"{rate:.1f} pages/s"]),
        *([] if final else [f"ETA {format_duration(eta)}"]),
    ]
    return " | ".join(parts)


def format_bar(progress: Progress, rate: float, eta: float | None, width: int) -> str:
    """The terminal's one-line bar, cut to ``width`` characters."""
    if progress.pages_known:
        share = min(progress.pages_done / progress.pages_known, 1.0)
        filled = round(share * BAR_CELLS)
        bar = f"[{'#' * filled}{'-' * (BAR_CELLS - filled)}] {share:4.0%}"
    else:
        bar = f"[{'?' * BAR_CELLS}]    ?"
    text = (f"{bar} {_of(progress.pages_done, progress.pages_known)} pages | "
            f"{rate:.1f}/s | ETA {format_duration(eta)} | {progress.items} sightings, "
            f"{progress.new} new products")
    return text[:width]


class _Bar:
    """A line redrawn in place on a terminal. A log record clears it first (the timer draws
    it again at its next tick), so log lines never end up glued to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False
        self._handlers: list[logging.Handler] = []

    def attach(self) -> None:
        """Hook the log handlers writing to the same stream; only once the crawl runs, as
        Scrapy replaces its root handler after the extensions are built."""
        self._handlers = [
            h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and h.stream is self.stream
        ]
        for handler in self._handlers:
            handler.addFilter(self._before_record)

    def detach(self) -> None:
        self.clear()
        for handler in self._handlers:
            handler.removeFilter(self._before_record)

    def width(self) -> int:
        """Columns to draw in: one less than the terminal's, so the line never wraps."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except OSError:
            columns = 0
        return (columns or 80) - 1

    def draw(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()
            self.shown = False

    def _before_record(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True


class ProgressReporter:
    """The extension: ``TMAPI_PROGRESS_INTERVAL`` seconds between log lines (0: off), and a
    bar when stderr is a terminal and ``TMAPI_PROGRESS_BAR`` allows."""

    def __init__(self, crawler: Crawler, interval: float, bar: _Bar | None) -> None:
        self.crawler = crawler
        self.stats: StatsCollector = crawler.stats
        self.interval = interval
        self.bar = bar
        self.rate = Rate()
        self._task: asyncio.Task[None] | None = None
        #: Set at close: the loop ends by it too, since a cancellation can be swallowed inside
        #: the Redis call of a cluster worker's line (a worker hung at close, after its
        #: scheduler had left, on ``await self._task``).
        self._closing = asyncio.Event()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        interval = settings.getfloat("TMAPI_PROGRESS_INTERVAL")
        if interval <= 0:
            raise NotConfigured
        bar = None
        if settings.getbool("TMAPI_PROGRESS_BAR") and sys.stderr.isatty():
            bar = _Bar(sys.stderr)
        reporter = cls(crawler, interval, bar)
        crawler.signals.connect(reporter.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(reporter.spider_closed, signal=signals.spider_closed)
        return reporter

    def spider_opened(self) -> None:
        progress = self._sample()
        if self.bar is not None:
            self.bar.attach()
            self._draw(progress)
        self._task = asyncio.ensure_future(self._run())

    async def spider_closed(self, reason: str = "") -> None:
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        progress = self._sample()
        if reason == FINISHED:
            progress = progress.finished()
        if self.bar is not None:
            self.bar.detach()
        await self._log(progress, final=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(self.interval, BAR_PERIOD) if self.bar is not None else self.interval
        next_line = loop.time() + self.interval
        while not await wait_set(self._closing, period):
            progress = self._sample()
            if self.bar is not None:
                self._draw(progress)
            now = loop.time()
            if now + period / 2 >= next_line:
                next_line += self.interval
                if next_line <= now:  # the loop was stalled: no burst of lines to catch up
                    next_line = now + self.interval
                await self._log(progress)

    def _sample(self) -> Progress:
        progress = Progress.from_stats(self.stats.get_stats())
        self.rate.add(time.monotonic(), progress.pages_done)
        return progress

    def _draw(self, progress: Progress) -> None:
        assert self.bar is not None
        rate = self.rate.per_second()
        self.bar.draw(format_bar(progress, rate, eta_seconds(progress, rate), self.bar.width()))

    async def _log(self, progress: Progress, *, final: bool = False) -> None:
        """This crawl's line; a distributed worker's scheduler gives the cluster's."""
        cluster_line = getattr(self.crawler.engine.scheduler, "progress_line", None)
        line = await cluster_line(final=final) if cluster_line is not None else None
        if line is None:
            rate = self.rate.per_second()
            line = format_line(progress, rate, None if final else eta_seconds(progress, rate),
                               final=final)
        logger.info("Progress: %s", line)
