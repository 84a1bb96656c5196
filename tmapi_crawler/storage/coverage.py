"""Which categories a crawl saw whole: only there can a product's absence mean it is gone.

A category is complete when the plan has a query of it without any filter (every product of
the category matches it) and nothing of the category was lost: no page given up on, no query
cut short by the result cap or ``max_pages``, no item without a readable id. Whoever notices a
loss says so with :func:`mark_incomplete`; the marks are stats, so they also end up in the
stats file, and a crawl-wide loss (a spider exception, products kept in the spill file instead
of MongoDB) leaves no category complete. A rejected item with a readable id is no loss: it is
kept in ``rejected_items`` and counts as seen in its category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tmapi_crawler import stats as stats_keys

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from tmapi_crawler.plan import Query

#: Losses that cannot be pinned on a category: products never written to MongoDB.
_CRAWL_WIDE_LOSSES = (stats_keys.ITEMS_SPILLED,)


def mark_incomplete(stats: StatsCollector, cat_id: int) -> None:
    stats.inc_value(stats_keys.incomplete(cat_id))


def complete_categories(queries: Iterable[Query], stats: Mapping[str, Any]) -> list[int]:
    """Categories with an unfiltered query and no loss noticed, from a crawl's final stats."""
    noticed = losses(stats)
    if noticed["spilled"] or noticed["spider_exceptions"]:
        return []
    return whole_categories(unfiltered_categories(queries), noticed["incomplete"])


def unfiltered_categories(queries: Iterable[Query]) -> set[int]:
    """Categories with a query without any filter: every product of them matches it."""
    return {query.cat_id for query in queries if not query.filters()}


def whole_categories(unfiltered: Iterable[int], incomplete: Iterable[int]) -> list[int]:
    """The ``unfiltered`` categories but the ``incomplete`` ones."""
    return sorted(set(unfiltered) - set(incomplete))


def losses(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The losses one process noticed, as a distributed worker reports them with its progress
    counters (so the cluster's end can tell the complete categories of all workers): the
    categories marked incomplete, items spilled, spider exceptions."""
    prefix = stats_keys.COVERAGE_INCOMPLETE
    return {
        "incomplete": sorted(int(key[len(prefix):]) for key, value in stats.items()
                             if key.startswith(prefix) and value),
        "spilled": sum(int(stats.get(key, 0)) for key in _CRAWL_WIDE_LOSSES),
        "spider_exceptions": sum(value for key, value in stats.items()
                                 if key.startswith("spider_exceptions/")),
    }
