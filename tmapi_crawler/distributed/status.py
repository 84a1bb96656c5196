"""The cluster's status: what ``scrapy status`` prints and what workers log as their progress.

Everything is read by one script (``lua/status.lua``), so every number comes from the same
moment, and both views are computed here from the same counters: the pages come from the
queue's own counters (done, failed, every entry ever queued), the products and answers from the
progress counters each worker writes together with its acknowledgements. So "done" and the
progress line can never disagree, a worker whose heartbeat expired shows as ``lost``, and a
crawl that is over shows no ETA.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from tmapi_crawler.distributed.keys import redact_url
from tmapi_crawler.progress import Progress, eta_seconds, format_line

if TYPE_CHECKING:
    from tmapi_crawler.distributed.cluster import Cluster


async def read_status(cluster: Cluster, *, final: bool = False) -> dict[str, Any]:
    """A read-only snapshot of the crawl, its workers, its progress and the limiter.

    ``final``: for a worker's last progress line, which shows no ETA.
    """
    keys, lkeys = cluster.keys, cluster.limiter_keys
    raw = await cluster.scripts["status"](
        keys=[keys.crawl, keys.queue, keys.dupefilter, keys.done, keys.failed, keys.workers,
              keys.progress, lkeys.limit, lkeys.permits, lkeys.stop],
        args=[keys.base],
    )
    return describe_state(cluster, json.loads(raw), final=final)


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
                         over=final or state in ("finished", "empty") or state.startswith("lost"))
    return {
        "redis": redact_url(cluster.url),
        "key": cluster.keys.base,
        "crawl_id": crawl.get("id"),
        "state": state,
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
              known: int, over: bool) -> dict[str, Any]:
    """The crawl's progress: pages from the queue, products and answers summed over every
    worker (lost and exited ones too), the rate of the live ones."""
    total = Progress.total(Progress.from_snapshot(s) for _, s in snapshots)
    total = replace(total, pages=done, pages_failed=failed, pages_known=known)
    rate = 0.0 if over else sum(float(s.get("rate", 0.0)) for alive, s in snapshots if alive)
    eta = None if over else eta_seconds(total, rate)
    return {
        **asdict(total),
        "pages_done": total.pages_done,
        "pages_left": total.pages_left,
        "rate": rate,
        "eta": eta,
        "line": format_line(total, rate, eta, queries=False, final=over),
    }
