"""A crawl's record of completeness, as ``crawl_runs`` keeps it (``complete``, ``incomplete``).

Made of the crawl's losses (``accounting``) and nothing else, with counts from the crawl's own
ledger pages (``crawl_pages``), so every run of a resumed crawl and every worker of a cluster
crawl is counted once: ``stored`` is the products its pages of the category showed, ``claimed``
the most results the API said a planned query of the category had (its page 1), ``unreached``
at least this many results left unread (null when nothing says how many).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tmapi_crawler.storage.collections import LEDGER

if TYPE_CHECKING:
    from tmapi_crawler.frontier.completeness import Loss
    from tmapi_crawler.storage.store import ProductStore


async def claimed(store: ProductStore, crawl_id: str, cat_id: int) -> int | None:
    """The largest ``total_count`` page 1 of a planned query of the category answered."""
    page = await store.db[LEDGER].find_one(
        {"crawl_id": crawl_id, "cat_id": cat_id, "context.page": 1,
         "context.depth": {"$exists": False}, "summary.total_count": {"$type": "number"}},
        {"summary.total_count": 1}, sort=[("summary.total_count", -1)])
    return None if page is None else int(page["summary"]["total_count"])


def unreached(losses: list[Loss], claimed_: int | None, stored: int) -> int | None:
    """At least this many results unread: what the losses said, or what the API claimed
    beyond what was stored; None when neither says."""
    said = sum(loss.unreached for loss in losses if loss.unreached is not None)
    beyond = claimed_ - stored if claimed_ is not None else 0
    if not said and beyond <= 0:
        return None
    return max(said, beyond)


async def record(store: ProductStore, crawl_id: str, losses: Iterable[Loss]
                 ) -> dict[str, Any]:
    """``{"complete": bool, "incomplete": {"<cat_id>": {...}}}`` for ``crawl_runs``."""
    by_category: dict[int, list[Loss]] = {}
    for loss in losses:
        by_category.setdefault(loss.cat_id, []).append(loss)
    incomplete: dict[str, Any] = {}
    for cat_id, found in sorted(by_category.items()):
        stored = len(await store.seen_by(crawl_id, cat_id))
        said = await claimed(store, crawl_id, cat_id)
        incomplete[str(cat_id)] = {
            "reasons": sorted({loss.reason for loss in found}),
            "stored": stored,
            "claimed": said,
            "unreached": unreached(found, said, stored),
            "queries": sorted({loss.query for loss in found}),
        }
    return {"complete": not incomplete, "incomplete": incomplete}


#: What the report and the status say of a crawl recorded before ``complete`` existed.
NOT_RECORDED = "not recorded"


def shown(run: dict[str, Any]) -> str:
    """A ``crawl_runs`` document's completeness, for ``scrapy report``."""
    if "complete" not in run:
        return "still running" if "finish_reason" not in run else NOT_RECORDED
    if run["complete"]:
        return "complete: every category read whole" + _limited(run)
    parts = []
    for cat_id, entry in sorted(run["incomplete"].items(), key=lambda kv: int(kv[0])):
        counts = f"{entry['stored']} stored"
        if entry.get("claimed") is not None:
            counts += f" of {entry['claimed']} claimed"
        if entry.get("unreached") is not None:
            counts += f", at least {entry['unreached']} unreached"
        parts.append(f"{cat_id} ({', '.join(entry['reasons'])}: {counts})")
    return f"incomplete: categories {'; '.join(parts)}" + _limited(run)


def _limited(run: dict[str, Any]) -> str:
    limited = run.get("limited")
    return f" (limited by you: max_pages={limited['max_pages']})" if limited else ""


def described(incomplete: dict[str, Any]) -> str:
    """``301 (unreachable), 5 (stopped)``: the categories and why, for a line of text."""
    return ", ".join(f"{cat_id} ({', '.join(entry['reasons'])})"
                     for cat_id, entry in sorted(incomplete.items(), key=lambda kv: int(kv[0])))
