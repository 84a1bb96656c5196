"""What a plan will probably cost, from the ledger of earlier crawls (free), or from page 1 of
each planned query (``--probe``: one paid call per query, reused by the crawl that follows).

From history, for each planned query: the paid calls of the last *finished* crawl that had it,
summed from ``crawl_pages`` by the planned query its pages descend from, and how old that
figure is. From a probe: the pages the frontier plans from page 1's answer alone — exact for a
query whose end page 1 shows within the reach, "at least" for one over the reach (split
further) or whose page 1 does not say how much follows. A query with neither is unknown: never
a made-up number.

A crawl of the same plan left unfinished is resumed by the next ``scrapy crawl`` with these
arguments (``storage.ledger``): the estimate shows it (:func:`pending`) with the pages it holds
and the calls still to pay, each planned query's figure less what its held pages cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import FINISHED
from tmapi_crawler.frontier import paging
from tmapi_crawler.frontier.decisions import FrontierSettings
from tmapi_crawler.frontier.frontier import Frontier
from tmapi_crawler.frontier.summary import PageSummary
from tmapi_crawler.plan import Query
from tmapi_crawler.storage.collections import CRAWL_RUNS, LEDGER
from tmapi_crawler.storage.ledger import STORED


@dataclass(frozen=True, slots=True)
class Figure:
    """One planned query's estimate: calls (None: unknown), from which crawl, as of when;
    from a probe: whether the calls are a lower bound, and why."""

    query: Query
    calls: int | None = None
    crawl_id: str | None = None
    at: datetime | None = None
    #: From a probe's page 1 (one of the calls, paid already), not from history.
    probed: bool = False
    at_least: bool = False
    note: str = ""


def from_history(db: Any, queries: tuple[Query, ...]) -> list[Figure]:
    """Each planned query's calls in the last finished crawl that had it (``db``: pymongo)."""
    keys = [q.key() for q in queries]
    rows = list(db[LEDGER].aggregate([
        {"$match": {"planned": {"$in": keys}}},
        {"$group": {"_id": {"planned": "$planned", "crawl": "$crawl_id"},
                    "calls": {"$sum": "$calls"}, "at": {"$max": "$at"}}},
    ]))
    crawls = {row["_id"]["crawl"] for row in rows}
    finished = {run["_id"] for run in db[CRAWL_RUNS].find(
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


@dataclass(frozen=True, slots=True)
class Pending:
    """An unfinished crawl of the plan, which the next crawl resumes: its pages held and the
    calls paid for them (pages given up on included), by planned query key."""

    crawl_id: str
    finish_reason: str | None
    held: dict[str, int]
    paid: dict[str, int]


def pending(db: Any, fingerprint: str, spider: str) -> Pending | None:
    """The crawl the next ``scrapy crawl`` of this plan resumes, as ``Ledger.open`` finds it."""
    runs = db[CRAWL_RUNS].find({"plan_fingerprint": fingerprint, "spider": spider},
                                 {"finish_reason": 1}).sort("started_at", -1).limit(1)
    last = next(iter(runs), None)
    if last is None or last.get("finish_reason") == FINISHED:
        return None
    held: dict[str, int] = {}
    paid: dict[str, int] = {}
    for row in db[LEDGER].aggregate([
        {"$match": {"crawl_id": last["_id"]}},
        {"$group": {"_id": "$planned", "calls": {"$sum": "$calls"},
                    "held": {"$sum": {"$cond": [{"$eq": ["$state", STORED]}, 1, 0]}}}},
    ]):
        held[row["_id"]], paid[row["_id"]] = row["held"], row["calls"]
    return Pending(last["_id"], last.get("finish_reason"), held, paid)


def pending_line(resume: Pending, figures: list[Figure]) -> str:
    """What the pending crawl holds, and what finishing it still costs: each planned query's
    figure less the calls its held pages cost (unknown if a query with pages has no figure)."""
    reason = resume.finish_reason or "interrupted"
    head = (f"Pending: crawl {resume.crawl_id} ({reason}) holds {sum(resume.held.values())} "
            f"pages, {sum(resume.paid.values())} calls paid; the next crawl with these "
            "arguments resumes it: ")
    by_key = {f.query.key(): f for f in figures}
    if any(by_key.get(key) is None or by_key[key].calls is None for key in resume.paid):
        return head + "calls still to pay unknown (no figure for a query it holds pages of)"
    left = sum(max((f.calls or 0) - resume.paid.get(key, 0), 0) for key, f in by_key.items()
               if f.calls is not None)
    bound = "at least " if any(f.at_least for f in figures) else ""
    return head + f"{bound}{left} calls still to pay for the known queries"


async def from_probe(settings: FrontierSettings, query: Query, summary: PageSummary) -> Figure:
    """A planned query's calls from its page 1 (``summary``), page 1 included: the pages the
    frontier (with the crawl's ``settings``) plans from that answer alone."""
    frontier = Frontier(settings)
    planned = await frontier.plan([query])
    decision = await frontier.on_page(planned.follow[0], summary)
    pages = planned.counters[stats_keys.PAGES_KNOWN] + decision.counters[stats_keys.PAGES_KNOWN]
    total = summary.total_count
    said = "" if total is None else f"{total} results; "
    if any(context.depth for context in decision.follow):
        floor = paging.pages_for(total, query.page_size) if total else 0
        return Figure(query, max(pages, floor), probed=True, at_least=True,
                      note=f"{said}over the reach of {settings.reach}: split further")
    ended = paging.ends_at(1, summary) is not None
    if not ended and total is None:
        return Figure(query, pages, probed=True, at_least=True,
                      note="page 1 says more follow, not how many")
    if not ended and settings.reach is None:
        return Figure(query, pages, probed=True, at_least=True,
                      note=f"{said}the reach is unknown (TMAPI_RESULT_CAP=0)")
    return Figure(query, pages, probed=True, note=f"{said}page 1 paid by the probe")


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


def _line(figure: Figure, width: int, *, probe: bool) -> str:
    key = f"  {figure.query.key():<{width}}  "
    if figure.calls is None:
        why = "not probed, no finished crawl had it" if probe else "no finished crawl had it"
        return f"{key}unknown ({why})"
    if figure.probed:
        return f"{key}{'at least ' if figure.at_least else ''}{figure.calls} calls ({figure.note})"
    return f"{key}{figure.calls} calls (crawl {figure.crawl_id}, {age(figure.at)})"


def report(figures: list[Figure], where: str, *, probe: str | None = None,
           resume: Pending | None = None) -> str:
    """The table the command prints, with a total over the known queries; ``probe``: the
    crawl id of the probe the figures marked ``probed`` come from; ``resume``: the crawl the
    next one resumes."""
    if probe is None:
        head = f"Estimate from earlier crawls in {where} (free; no API call made):"
    else:
        head = (f"Estimate from page 1 of each planned query (probe: crawl {probe}), else from "
                f"earlier crawls in {where}:")
    width = max((len(f.query.key()) for f in figures), default=0)
    lines = [head, *(_line(f, width, probe=probe is not None) for f in figures)]
    known = [f for f in figures if f.calls is not None]
    unknown = len(figures) - len(known)
    bound = "at least " if any(f.at_least for f in known) else ""
    total = (f"Total: {bound}{sum(f.calls or 0 for f in known)} calls for {len(known)} of "
             f"{len(figures)} queries")
    if paid := sum(f.probed for f in known):
        total += f", {paid} of them paid already (the probe's page 1s)"
    if unknown:
        total += f"; {unknown} unknown, not counted"
    lines.append(total)
    if resume is not None:
        lines.append(pending_line(resume, figures))
    return "\n".join(lines)
