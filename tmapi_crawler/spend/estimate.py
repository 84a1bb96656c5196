"""What a plan will probably cost, from the ledger of earlier crawls (free).

For each planned query: the paid calls of the last *finished* crawl that had it, summed from
``crawl_pages`` by the planned query its pages descend from, and how old that figure is. A
query no finished crawl had is unknown: never a made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tmapi_crawler.closing import FINISHED
from tmapi_crawler.plan import Query
from tmapi_crawler.spend.ledger import COLLECTION


@dataclass(frozen=True, slots=True)
class Figure:
    """One planned query's estimate: calls (None: unknown), from which crawl, as of when."""

    query: Query
    calls: int | None = None
    crawl_id: str | None = None
    at: datetime | None = None


def from_history(db: Any, queries: tuple[Query, ...]) -> list[Figure]:
    """Each planned query's calls in the last finished crawl that had it (``db``: pymongo)."""
    keys = [q.key() for q in queries]
    rows = list(db[COLLECTION].aggregate([
        {"$match": {"planned": {"$in": keys}}},
        {"$group": {"_id": {"planned": "$planned", "crawl": "$crawl_id"},
                    "calls": {"$sum": "$calls"}, "at": {"$max": "$at"}}},
    ]))
    crawls = {row["_id"]["crawl"] for row in rows}
    finished = {run["_id"] for run in db["crawl_runs"].find(
        {"_id": {"$in": sorted(crawls)}, "finish_reason": FINISHED}, {"_id": 1})}
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["_id"]["planned"]
        if row["_id"]["crawl"] in finished and (key not in best or row["at"] > best[key]["at"]):
            best[key] = row
    return [
        Figure(q, best[q.key()]["calls"], best[q.key()]["_id"]["crawl"], best[q.key()]["at"])
        if q.key() in best else Figure(q)
        for q in queries
    ]


def age(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return ""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - at).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} old"
    return "just now"


def report(figures: list[Figure], where: str) -> str:
    """The table the command prints, with a total over the known queries."""
    lines = [f"Estimate from earlier crawls in {where} (free; no API call made):"]
    width = max((len(f.query.key()) for f in figures), default=0)
    for figure in figures:
        if figure.calls is None:
            lines.append(f"  {figure.query.key():<{width}}  unknown (no finished crawl had it)")
        else:
            lines.append(f"  {figure.query.key():<{width}}  {figure.calls} calls "
                         f"(crawl {figure.crawl_id}, {age(figure.at)})")
    known = [f.calls for f in figures if f.calls is not None]
    unknown = len(figures) - len(known)
    total = f"Total: {sum(known)} calls for {len(known)} of {len(figures)} queries"
    if unknown:
        total += f"; {unknown} unknown, not counted"
    lines.append(total)
    return "\n".join(lines)
