"""The cluster's status: what ``scrapy status`` prints and what workers log as their progress.

Everything is read by one script (``lua/status.lua``), so every number comes from the same
moment, and every view is computed here from the same counters: the pages come from the
queue's own counters (done, failed, every entry ever queued), the sightings from the counter
the acknowledgements add each page's products to (so a page fetched twice, by a worker killed
before its acknowledgement and by the one that took it back, counts once), the queries begun
and done from the frontier's shared counters (each query is decided once), the rest (answers,
rejected, new products) from the progress counters each worker writes together with its
acknowledgements and failures. So "done" and the progress line can never disagree, a worker
whose heartbeat expired shows as ``lost``, and a crawl that is over shows no ETA. The crawl's
record in ``crawl_runs`` takes its counts from the same reading (:func:`read_totals`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.frontier.completeness import PAGES_GIVEN_UP, Loss, loss_from_dict, merge
from tmapi_crawler.frontier.decisions import QUERIES_BEGUN, QUERIES_DONE
from tmapi_crawler.progress import eta_seconds, format_line
from tmapi_crawler.stats import Progress
from tmapi_crawler.storage.completeness import NOT_RECORDED

if TYPE_CHECKING:
    from tmapi_crawler.distributed.cluster import Cluster


#: Fields of the crawl's hash the finaliser sets (``crawl_runs.complete`` and the incomplete
#: categories, as the final line names them); absent for a crawl finished before they existed.
COMPLETE_FIELD = "complete"
INCOMPLETE_FIELD = "incomplete"


def completeness(crawl: dict[str, Any], state: str) -> str | None:
    """What ``scrapy status`` says of a crawl's completeness: None while it runs."""
    if state != "finished":
        return None
    if COMPLETE_FIELD not in crawl:
        return NOT_RECORDED
    if str(crawl[COMPLETE_FIELD]) == "1":
        return "complete"
    return f"incomplete: categories {crawl.get(INCOMPLETE_FIELD, '')}"


async def record_completeness(cluster: Cluster, complete: bool, incomplete: str) -> None:
    """The finaliser's completeness record, for ``scrapy status`` (:func:`completeness`)."""
    await cluster.client.hset(cluster.keys.crawl, mapping={
        COMPLETE_FIELD: int(complete), INCOMPLETE_FIELD: incomplete})


async def read_status(cluster: Cluster, *, final: bool = False) -> dict[str, Any]:
    """A read-only snapshot of the crawl, its workers, its progress and the limiter.

    ``final``: for a worker's last progress line, which shows no ETA.
    """
    return describe_state(cluster, await _read_raw(cluster), final=final)


async def _read_raw(cluster: Cluster) -> dict[str, Any]:
    keys, lkeys = cluster.keys, cluster.limiter_keys
    raw = await cluster.scripts["status"](
        keys=[keys.crawl, keys.queue, keys.dupefilter, keys.done, keys.failed, keys.workers,
              keys.progress, lkeys.limit, lkeys.permits, lkeys.stop, keys.sightings,
              keys.frontier],
        args=[keys.base, QUERIES_BEGUN, QUERIES_DONE],
    )
    return dict(json.loads(raw))


def _mapping(value: Any) -> dict[str, Any]:
    """cjson encodes an empty table as an object: an empty list reads as {}."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def describe_state(cluster: Cluster, raw: dict[str, Any], *, final: bool = False
                   ) -> dict[str, Any]:
    now = float(raw["now"])
    crawl = _mapping(raw["crawl"])
    rows, snapshots, in_flight, lost = [], [], 0, 0
    for worker in sorted(_list(raw["workers"]), key=lambda w: w["id"]):
        info = json.loads(worker["info"])
        alive, leased = bool(worker["alive"]), int(worker["leased"])
        if alive:
            in_flight += leased
        else:
            lost += leased
        state = info.get("state")
        if not alive and state == "running":
            state = "lost"
        rows.append({
            "id": worker["id"], "host": info.get("host"), "pid": info.get("pid"),
            "alive": alive, "state": state, "finish_reason": info.get("finish_reason"),
            "last_seen_age": round(now - float(info.get("last_seen", now)), 1),
            "leased": leased,
        })
        if worker["progress"]:
            snapshots.append((alive, json.loads(worker["progress"])))
    stop = _mapping(raw["stop"])
    stop_info = ({"reason": stop["reason"], "age": round(now - int(stop["at"]) / 1000, 1)}
                 if stop else None)
    live = sum(1 for row in rows if row["alive"])
    done, failed, known = int(raw["done"]), int(raw["failed"]), int(raw["known"])
    failed_known = int(raw["failed_known"])
    state = _state(crawl, live=live, left=raw["queued"] + in_flight + lost, known=known,
                   stop=stop_info, now=now)
    progress = _progress(snapshots, done=done, failed=failed_known, known=known,
                         sightings=int(raw["sightings"]),
                         queries=(int(raw["queries"]), int(raw["queries_done"])),
                         over=final or state in ("finished", "empty")
                         or state.startswith(("lost", "stopped")))
    return {
        "redis": redact_url(cluster.url),
        "key": cluster.keys.base,
        "crawl_id": crawl.get("id"),
        "state": state,
        "completeness": completeness(crawl, state),
        "queued": int(raw["queued"]),
        "in_flight": in_flight,
        "in_flight_lost": lost,
        "done": done,
        "failed": failed,
        "refused": int(raw["refused"]),
        "known": known,
        "progress": round((done + failed_known) / known, 4) if known else None,
        "missing": int(crawl.get("missing", 0)),
        "workers": rows,
        "stop": stop_info,
        "limiter": {"limit": int(raw["limit"]) or None, "permits_in_use": int(raw["permits"])},
        "cluster_progress": progress,
    }


def _state(crawl: dict[str, Any], *, live: int, left: int, known: int,
           stop: dict[str, Any] | None, now: float) -> str:
    if not crawl:
        return "none"
    if "lost" in crawl:
        return f"lost ({crawl['lost']})"
    if "completed_at" in crawl:
        return "finished"
    if live:
        return "running"
    started = float(crawl.get("started_at", 0))
    if stop is not None and now - stop["age"] >= started:
        return f"stopped ({stop['reason']})"
    if not left and not known:
        return "empty"
    return "waiting for workers"


def _progress(snapshots: list[tuple[bool, dict[str, Any]]], *, done: int, failed: int,
              known: int, sightings: int, queries: tuple[int, int], over: bool
              ) -> dict[str, Any]:
    """The crawl's progress: pages and sightings from the queue's counters, the queries (begun,
    done) from the frontier's, the rest summed over every worker (lost and exited ones too),
    the rate of the live ones."""
    total = Progress.total(Progress.from_snapshot(s) for _, s in snapshots)
    total = replace(total, pages=done, pages_failed=failed, pages_known=known, items=sightings,
                    queries=queries[0], queries_done=queries[1])
    # A crawl that ended has no rate: 0.0 pages/s would read as a stalled one.
    rate = None if over else sum(float(s.get("rate", 0.0)) for alive, s in snapshots if alive)
    eta = None if rate is None else eta_seconds(total, rate)
    return {
        **asdict(total),
        "pages_done": total.pages_done,
        "pages_left": total.pages_left,
        "rate": rate,
        "eta": eta,
        "line": format_line(total, rate, eta, final=over),
    }


@dataclass(frozen=True, slots=True)
class CrawlTotals:
    """The whole cluster crawl's counts, as ``crawl_runs`` records them: the same counters
    ``scrapy status`` shows, read at one moment, with what coverage needs to know."""

    progress: dict[str, Any]
    failed: int
    #: Categories of the unfiltered queries the crawl took pages of.
    categories: frozenset[int]
    #: Categories where some worker noticed a loss (a page given up on, an item without an id,
    #: results out of reach): none of them was seen whole.
    incomplete: frozenset[int]
    #: Losses no category can be told from (items kept in a spill file, a spider exception,
    #: a refused queue entry): then no category was seen whole.
    crawl_wide_losses: tuple[str, ...]
    #: Workers whose heartbeat expired while they were still crawling (killed).
    dead_workers: tuple[str, ...]
    #: What the workers could not read (``frontier.completeness``), given-up pages included.
    losses: tuple[Loss, ...] = ()

    def counts(self) -> dict[str, int]:
        """The run's counts, named as ``crawl_runs.counts``."""
        p = self.progress
        return {"pages": p["pages"], "items": p["items"], "rejected": p["rejected"],
                "spilled": p["spilled"], "failed_pages": self.failed}


async def read_totals(cluster: Cluster) -> CrawlTotals:
    """Read the crawl's totals: the status counters, and every failed entry's category."""
    raw = await _read_raw(cluster)
    status = describe_state(cluster, raw, final=True)
    failed = await cluster.client.hvals(cluster.keys.failed)
    categories: set[int] = set()
    incomplete: set[int] = set()
    losses: set[str] = set()
    found: list[Loss] = []
    for record in failed:
        try:
            context, _ = entries.decode(json.loads(record)["entry"])
        except (entries.RefusedEntry, ValueError, KeyError, TypeError):
            losses.add("refused queue entries")
            continue
        incomplete.add(context.query.cat_id)
        found.append(Loss(context.query.cat_id, PAGES_GIVEN_UP, context.query.key()))
    spilled = 0
    for worker in _list(raw["workers"]):
        if not worker["progress"]:
            continue
        snapshot = json.loads(worker["progress"])
        categories.update(int(c) for c in snapshot.get("categories", ()))
        incomplete.update(int(c) for c in snapshot.get("incomplete", ()))
        spilled += int(snapshot.get("spilled", 0))
        found.extend(loss_from_dict(loss) for loss in snapshot.get("losses", ()))
        if snapshot.get("spider_exceptions"):
            losses.add("spider exceptions")
    if spilled:
        losses.add("items kept in spill files")
    dead = tuple(row["id"] for row in status["workers"] if row["state"] == "lost")
    return CrawlTotals(
        progress={**status["cluster_progress"], "spilled": spilled},
        failed=status["failed"], categories=frozenset(categories),
        incomplete=frozenset(incomplete),
        crawl_wide_losses=tuple(sorted(losses)), dead_workers=dead,
        losses=tuple(merge(found)),
    )
