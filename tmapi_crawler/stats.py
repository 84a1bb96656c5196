"""Every stats key the crawler writes, and the collector that saves them to ``STATS_FILE``.

Keys live here only, so a reader (progress, ``crawl_runs``, reports, tests) and a writer can
never disagree on a spelling; ``docs/reference/stats.md`` says what each one counts. Keys
with a variable part are built by the functions below, from a bounded vocabulary (answer
codes, failure reasons, category ids, split kinds), never from free text.

Scrapy's collectors persist the stats in ``_persist_stats`` once the spider closed, after
``finish_reason`` is set — also when the crawl ended before it started (e.g. storage down),
which no engine signal covers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Self

from scrapy.statscollectors import MemoryStatsCollector

PREFIX: Final = "tmapi"

CRAWL_ID: Final = f"{PREFIX}/crawl_id"

# Transport: paid calls and what they answered.
REQUESTS: Final = f"{PREFIX}/requests"
#: Requests the crawl's stop kept from being sent (waiting for a permit, or backing off).
REQUESTS_NOT_SENT: Final = f"{PREFIX}/requests/not_sent"
#: Requests refused unsigned: not under ``TMAPI_BASE_URL``'s API path (the token never left).
REQUESTS_REFUSED: Final = f"{PREFIX}/requests/refused"
ANSWERS: Final = f"{PREFIX}/answers/"
RETRY: Final = f"{PREFIX}/retry"
THROTTLE_LIMIT: Final = f"{PREFIX}/throttle/limit"
THROTTLE_PEAK: Final = f"{PREFIX}/throttle/peak_in_flight"
THROTTLE_INCREASES: Final = f"{PREFIX}/throttle/increases"
THROTTLE_DECREASES: Final = f"{PREFIX}/throttle/decreases"

# Pages and queries.
QUERIES: Final = f"{PREFIX}/queries"
QUERIES_DONE: Final = f"{PREFIX}/queries/done"
PAGES: Final = f"{PREFIX}/pages"
PAGES_EMPTY: Final = f"{PREFIX}/pages/empty"
PAGES_KNOWN: Final = f"{PREFIX}/pages/known"
PAGES_FAILED: Final = f"{PREFIX}/pages/failed"
PAGES_FAILED_BY_REASON: Final = f"{PREFIX}/pages/failed_by_reason/"

# Items.
ITEMS: Final = f"{PREFIX}/items"
ITEMS_REJECTED: Final = f"{PREFIX}/items/rejected"
ITEMS_SPILLED: Final = f"{PREFIX}/items/spilled"

# The frontier: paging and splitting past the result cap (tmapi_crawler/frontier/).
PAGING_SHORT: Final = f"{PREFIX}/paging/short_pages"
PAGING_STALE: Final = f"{PREFIX}/paging/stale_pages"
PAGING_STOPPED: Final = f"{PREFIX}/paging/stopped_queries"
PAGING_RESIZED: Final = f"{PREFIX}/paging/resized_queries"
SPLIT_QUERIES: Final = f"{PREFIX}/split/queries"
SPLIT_BY: Final = f"{PREFIX}/split/by/"
SPLIT_SLICES: Final = f"{PREFIX}/split/slices"
SPLIT_EXTRA_REQUESTS: Final = f"{PREFIX}/split/extra_requests"
SPLIT_UNREACHABLE: Final = f"{PREFIX}/split/unreachable"
SPLIT_UNREACHABLE_UNKNOWN: Final = f"{PREFIX}/split/unreachable_unknown"
SPLIT_UNSORTED_PAGES: Final = f"{PREFIX}/split/unsorted_pages"
SPLIT_PRICE_IGNORED: Final = f"{PREFIX}/split/price_filter_ignored"
SPLIT_DETECTED_CAP: Final = f"{PREFIX}/split/detected_cap"
SPLIT_UNSETTLED_CELLS: Final = f"{PREFIX}/split/unsettled_cells"

# Storage.
DB_BATCHES: Final = f"{PREFIX}/db/batches"
DB_SIGHTINGS: Final = f"{PREFIX}/db/sightings"
DB_CREATED: Final = f"{PREFIX}/db/created"
DB_CHANGED: Final = f"{PREFIX}/db/changed"
DB_REFUSED: Final = f"{PREFIX}/db/refused"
#: Flushes that failed for a reason no document caused (their items went to the spill file).
DB_FLUSH_ERRORS: Final = f"{PREFIX}/db/flush_errors"
PRODUCTS: Final = f"{PREFIX}/products/"
COVERAGE_INCOMPLETE: Final = f"{PREFIX}/coverage/incomplete/"

# Completeness (tmapi_crawler/accounting.py): what the crawl could not read.
#: Losses by reason (``frontier.completeness``): ``completeness/losses/<reason>``.
COMPLETENESS_LOSSES: Final = f"{PREFIX}/completeness/losses/"
#: True when the crawl read everything it was asked for (set where ``crawl_runs`` records it).
COMPLETENESS_COMPLETE: Final = f"{PREFIX}/completeness/complete"
#: The incomplete categories and why, as the final line names them: ``301 (unreachable)``.
COMPLETENESS_INCOMPLETE: Final = f"{PREFIX}/completeness/incomplete"

# Stopping.
#: 1 when a second Ctrl-C forced the stop (what was parsed was still saved).
FORCED_STOP: Final = f"{PREFIX}/stop/forced"

# Spend control (storage/ledger.py, storage/spool.py): resuming without paying twice.
#: Pages a resumed crawl already held from its interrupted runs: replayed, not fetched.
RESUME_PAGES_HELD: Final = f"{PREFIX}/resume/pages_held"
#: Paid calls those pages had cost: what the resume saved.
RESUME_CALLS_SAVED: Final = f"{PREFIX}/resume/calls_saved"
#: The answer spool (``crawl_answers``, storage/spool.py): successful answers sent to it before
#: their permit was released; not kept because MongoDB did not take them in time, or refused
#: them (seen when the ledger drops the page) — the page is merely unprotected; not kept
#: because larger than 15 MB; answers a resume was handed from the spool instead of paying
#: (their calls count in ``resume/calls_saved``).
SPOOL: Final = f"{PREFIX}/spool/"
SPOOL_KEPT: Final = f"{SPOOL}kept"
SPOOL_NOT_KEPT: Final = f"{SPOOL}not_kept"
SPOOL_TOO_LARGE: Final = f"{SPOOL}too_large"
SPOOL_REPLAYED: Final = f"{SPOOL}replayed"
#: ``TMAPI_MAX_REQUESTS`` (absent without a budget).
BUDGET: Final = f"{PREFIX}/budget/max"
#: Paid calls by what they bought (they add up to ``tmapi/requests``): a page stored (its
#: last, successful call), a retry of a page stored, a page of a split query (all its calls),
#: a page given up on (all its calls), a probe (``scrapy estimate --probe``).
COST: Final = f"{PREFIX}/cost/"
COST_PAGES: Final = f"{COST}pages"
COST_RETRIES: Final = f"{COST}retries"
COST_SPLITS: Final = f"{COST}splits"
COST_FAILURES: Final = f"{COST}failures"
COST_PROBES: Final = f"{COST}probes"
COST_BY_CATEGORY: Final = f"{PREFIX}/cost_by_category/"

# Alerts (tmapi_crawler/alerts/): messages of the rules that fired when the crawl ended.
ALERTS: Final = f"{PREFIX}/alerts/"
#: Messages delivered, and not delivered within ``TMAPI_ALERTS_TIMEOUT`` (one per rule and
#: destination); the changes the delivered ones listed; changes skipped as sent before.
ALERTS_SENT: Final = f"{ALERTS}sent"
ALERTS_FAILED: Final = f"{ALERTS}failed"
ALERTS_PRODUCTS: Final = f"{ALERTS}products"
ALERTS_ALREADY_SENT: Final = f"{ALERTS}already_sent"

# Distributed workers.
DISTRIBUTED: Final = f"{PREFIX}/distributed"
WORKER_ID: Final = f"{DISTRIBUTED}/worker_id"
DISTRIBUTED_GIVEN_BACK: Final = f"{DISTRIBUTED}/given_back"
DISTRIBUTED_ACKED: Final = f"{DISTRIBUTED}/acked"
DISTRIBUTED_RECLAIMED: Final = f"{DISTRIBUTED}/reclaimed_before_ack"
DISTRIBUTED_FAILED: Final = f"{DISTRIBUTED}/failed"
DISTRIBUTED_REAPED: Final = f"{DISTRIBUTED}/reaped"
DISTRIBUTED_REFUSED: Final = f"{DISTRIBUTED}/refused"
DISTRIBUTED_MISSING: Final = f"{DISTRIBUTED}/missing"
#: Seconds a worker waited with nothing left before it closed (``MAX_IDLE_TIME_BEFORE_CLOSE``):
#: no part of the crawl's duration.
DISTRIBUTED_IDLE: Final = f"{DISTRIBUTED}/idle_before_close"


def answer(code: int | str) -> str:
    """Answers by code: an API code, a broken answer's reason or a transport failure's name
    (``transport.answers``: a fixed vocabulary), e.g. ``answers/DownloadTimeoutError``."""
    return f"{ANSWERS}{code}"


def failed_by_reason(reason: str) -> str:
    """Pages given up on, by the same vocabulary as :func:`answer` (and ``not_sent``, …)."""
    return f"{PAGES_FAILED_BY_REASON}{reason}"


def split_by(how: str) -> str:
    return f"{SPLIT_BY}{how}"


#: Sightings of the whole crawl, over all its runs (``crawl_runs.counts.items``), set at close:
#: the figure the crawl's products are counted beside.
CRAWL_SIGHTINGS: Final = f"{PRODUCTS}sightings"


def product_count(name: str) -> str:
    """Products counted from the database at close: ``products/{new,updated,changed,...}``."""
    return f"{PRODUCTS}{name}"


def incomplete(cat_id: int) -> str:
    """Losses noticed in one category (see ``storage.coverage``)."""
    return f"{COVERAGE_INCOMPLETE}{cat_id}"


def completeness_loss(reason: str) -> str:
    """Losses of one reason (``frontier.completeness.REASONS``)."""
    return f"{COMPLETENESS_LOSSES}{reason}"


def cost_by_category(cat_id: int) -> str:
    """Paid calls spent on one category's pages."""
    return f"{COST_BY_CATEGORY}{cat_id}"


def with_prefix(stats: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The stats under ``prefix``, keyed by the rest of their name."""
    return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}


# The progress counters: what a crawl's progress line, ``scrapy status`` and a cluster
# worker's snapshot in Redis read from the stats (``progress.py``, ``distributed.keeper``).

#: Seconds of history the rate is measured over: long enough to smooth bursts of page 1s and
#: retries, short enough to follow a throttled account.
RATE_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Progress:
    """The counters of one crawl (or, summed, of a cluster's workers)."""

    queries: int = 0
    queries_done: int = 0
    pages: int = 0
    pages_failed: int = 0
    pages_known: int = 0
    #: Pages a resume holds from the crawl's earlier runs: replayed, done without a fetch.
    pages_held: int = 0
    items: int = 0
    stored: int = 0
    new: int = 0
    rejected: int = 0
    #: Paid calls, and the budget (``TMAPI_MAX_REQUESTS``; 0: none).
    calls: int = 0
    budget: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> Self:
        return cls(
            queries=stats.get(QUERIES, 0),
            queries_done=stats.get(QUERIES_DONE, 0),
            pages=stats.get(PAGES, 0),
            pages_failed=stats.get(PAGES_FAILED, 0),
            pages_known=stats.get(PAGES_KNOWN, 0),
            pages_held=stats.get(RESUME_PAGES_HELD, 0),
            items=stats.get(ITEMS, 0),
            stored=stats.get(DB_SIGHTINGS, 0),
            new=stats.get(DB_CREATED, 0),
            rejected=stats.get(ITEMS_REJECTED, 0),
            calls=stats.get(REQUESTS, 0),
            budget=stats.get(BUDGET, 0),
            answers=with_prefix(stats, ANSWERS),
        )

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Self:
        return cls(**{f.name: snapshot.get(f.name, f.default) for f in fields(cls)
                      if f.name != "answers"}, answers=dict(snapshot.get("answers", {})))

    @classmethod
    def total(cls, parts: Iterable[Progress]) -> Self:
        """The sum of several workers' counters."""
        sums: dict[str, Any] = {f.name: 0 for f in fields(cls) if f.name != "answers"}
        answers: dict[str, int] = {}
        budgets = [0]
        for part in parts:
            budgets.append(part.budget)
            for name in sums:
                sums[name] += getattr(part, name)
            for code, count in part.answers.items():
                answers[code] = answers.get(code, 0) + count
        sums["budget"] = max(budgets)  # one budget for the cluster crawl, not one each
        return cls(**sums, answers=answers)

    @property
    def pages_done(self) -> int:
        return self.pages + self.pages_failed + self.pages_held

    def finished(self) -> Self:
        """The counters of a crawl that ran to its end: every page it needed is done."""
        return replace(self, pages_known=self.pages_done)

    @property
    def pages_left(self) -> int | None:
        """Known pages not done yet; None while nothing says how many pages there are."""
        return max(self.pages_known - self.pages_done, 0) if self.pages_known else None

    @property
    def updated(self) -> int:
        return self.stored - self.new


class Rate:
    """Pages per second over the last ``window`` seconds of samples."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        self._samples.append((at, done))
        # Keep the newest sample older than the window as the base: a rate over at least the
        # window, also when samples come less often than that.
        while len(self._samples) > 2 and self._samples[1][0] <= at - self.window:
            self._samples.popleft()

    def per_second(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end > start else 0.0


class StatsFileCollector(MemoryStatsCollector):
    """``STATS_FILE`` set: the final stats go there as JSON; empty: nothing is written."""

    def _persist_stats(self, stats: dict[str, Any]) -> None:
        super()._persist_stats(stats)
        path = self._crawler.settings.get("STATS_FILE")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(stats, default=str, indent=1, sort_keys=True))
