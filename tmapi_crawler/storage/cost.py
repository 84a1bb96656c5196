"""What a crawl cost: paid calls by what they bought, per category, per product, and saved.

Every paid call is counted once, when its page is settled: the spider calls :func:`count_page`
with the calls the transport counted for the page (``CALLS_META``), so the buckets add up to
``tmapi/requests`` (a page the crawl's stop kept from being sent cost nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.context import PageContext

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

#: The buckets, in the order they are shown, by their name in ``crawl_runs.cost``.
BUCKETS = {
    "pages": stats_keys.COST_PAGES,
    "retries": stats_keys.COST_RETRIES,
    "splits": stats_keys.COST_SPLITS,
    "failures": stats_keys.COST_FAILURES,
    "probes": stats_keys.COST_PROBES,
}


def count_page(stats: StatsCollector, context: PageContext, calls: int, *, ok: bool,
               read_again: bool = False, probe: bool = False) -> None:
    """Count a settled page's calls into their buckets and its category.

    ``read_again``: the page's query was split on it, so what it showed is read again by the
    split: the call it took to learn that is what splitting cost. Pages of split queries are
    pages like any other (each stored once). Every call of a probe (``scrapy estimate
    --probe``) is a probe's.
    """
    if not calls:
        return
    if probe:
        stats.inc_value(stats_keys.COST_PROBES, calls)
    elif not ok:
        stats.inc_value(stats_keys.COST_FAILURES, calls)
    else:
        stats.inc_value(stats_keys.COST_SPLITS if read_again else stats_keys.COST_PAGES)
        if calls > 1:
            stats.inc_value(stats_keys.COST_RETRIES, calls - 1)
    stats.inc_value(stats_keys.cost_by_category(context.query.cat_id), calls)


def cost_of(stats: Mapping[str, Any], products: int | None = None) -> dict[str, Any]:
    """The run's cost as ``crawl_runs.cost`` records it."""
    calls = stats.get(stats_keys.REQUESTS, 0)
    cost: dict[str, Any] = {
        "calls": calls,
        **{name: stats.get(key, 0) for name, key in BUCKETS.items()},
        "by_category": stats_keys.with_prefix(stats, stats_keys.COST_BY_CATEGORY),
        "saved_by_resume": stats.get(stats_keys.RESUME_CALLS_SAVED, 0),
    }
    if products:
        cost["per_product"] = round(calls / products, 4)
    return cost


def format_cost(cost: Mapping[str, Any]) -> str:
    """E.g. ``120 API calls (100 pages, 12 retries, 8 splits, 0 failures, 0 probes;
    0.06 per product; a resume saved 40)``."""
    parts = ", ".join(f"{cost.get(name, 0)} {name}" for name in BUCKETS)
    if "per_product" in cost:
        parts += f"; {cost['per_product']:.3f} per product"
    if cost.get("saved_by_resume"):
        parts += f"; a resume saved {cost['saved_by_resume']}"
    return f"{cost.get('calls', 0)} API calls ({parts})"
