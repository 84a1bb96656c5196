"""The one end of a cluster crawl (issue 13, point 3), with real workers, one of them killed.

When the crawl is complete, exactly one worker finalises it: ``crawl_runs`` then holds the
whole crawl's counts (the killed worker's part included, nothing twice), the products gone from
the categories seen whole are marked vanished, "Crawled completely" is logged once, and the
killed worker is marked dead. ``scrapy status`` shows the same counts.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pymongo

from tests.cluster import (
    CATEGORIES,
    PROGRESS,
    Env,
    Worker,
    finish,
    joined_before_any_call,
    served,
    stalled_mid_crawl,
    stored_products,
    truth,
)
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.commands.crawl import summary_line

IDLE = stats_keys.DISTRIBUTED_IDLE
COMPLETELY = "Crawled completely: categories 1, 2, 3;"


def crawl_with_a_killed_worker(env: Env, workers: Callable[..., list[Worker]],
                               prefix: str) -> tuple[list[Worker], Worker]:
    """Seed the categories and crawl them with 3 workers, one killed with SIGKILL mid-crawl
    while it holds leased pages; the survivors once they exited, and the victim."""
    assert env.seed(*(f"cat_id={','.join(map(str, CATEGORIES))}",)).returncode == 0
    start = served(env)
    cluster = joined_before_any_call(env, workers, 3, prefix, stall_after=start + 10,
                                     TMAPI_PROGRESS_INTERVAL=0.2)
    with stalled_mid_crawl(env, cluster, start + 10) as (victim, survivors):
        victim.signal(signal.SIGKILL)
        victim.wait()
    assert finish(survivors) == ["finished"] * 2
    return survivors, victim


def test_one_worker_finalises_the_crawl_with_every_workers_counts(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    db = mongo_client[env.database]
    survivors, victim = crawl_with_a_killed_worker(env, workers, "first")
    status = env.status()
    crawl_id = status["crawl_id"]
    products, pages = truth(env)
    sightings = sum(env.sandbox.truth(cat_id=c)["total"] for c in CATEGORIES)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)

    run = db.crawl_runs.find_one({"_id": crawl_id})
    counts = run["counts"]
    # The truth: each page and product once, although the victim's pages were fetched again.
    assert (counts["pages"], counts["failed_pages"]) == (len(pages), 0)
    assert counts["items"] == sightings
    assert counts["products_seen"] == counts["new"] == len(products)
    assert (counts["vanished"], counts["rejected"], counts["spilled"]) == (0, 0, 0)
    assert (run["status"], run["finish_reason"]) == ("closed", "finished")
    # The same counters as `scrapy status`.
    progress = status["cluster_progress"]
    assert (progress["pages"], progress["items"]) == (counts["pages"], counts["items"])
    assert progress["answers"] == run["answers"]
    # Each query counted once, although the victim's pages were decided again.
    assert (progress["queries"], progress["queries_done"]) == (3, 3)
    assert progress["eta"] is None
    # The victim is dead, in Redis and in crawl_runs; the survivors closed.
    (victim_id,) = [w["id"] for w in status["workers"] if w["pid"] == victim.pid]
    assert run["workers"][victim_id]["status"] == "dead"
    assert sorted(w["status"] for w in run["workers"].values()) == ["closed", "closed", "dead"]
    # Exactly one worker finalised it, and said so once; no worker's last line has an ETA.
    logs = [w.log for w in (*survivors, victim)]
    assert sum(log.count(COMPLETELY) for log in logs) == 1
    (finaliser,) = [w for w in survivors if COMPLETELY in w.log]
    assert run["completed_by"] == finaliser.stats["tmapi/distributed/worker_id"]
    for worker in survivors:
        assert "ETA" not in PROGRESS.findall(worker.log)[-1]
    # The crawl complete, every worker closed at once: none waited MAX_IDLE_TIME_BEFORE_CLOSE
    # (a crawl that never had work does: test_cluster_scheduler.py), so the duration is the
    # crawl's.
    assert not [w.stats for w in survivors if IDLE in w.stats]
    assert all(f" finished in {w.stats['elapsed_time_seconds']:.1f} s:"
               in summary_line(w.stats, None) for w in survivors)

    # A re-crawl of a shrunk category, again with a killed worker: what the categories no
    # longer list (category 2 shares some of category 1's products) is marked vanished, once,
    # by the finaliser.
    listed = {c: set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    env.sandbox.configure(sizes={"1": 500})
    gone = {c: listed[c] - set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    assert len(gone[1]) == 100
    survivors, victim = crawl_with_a_killed_worker(env, workers, "second")
    again = env.status()["crawl_id"]
    assert again != crawl_id
    run = db.crawl_runs.find_one({"_id": again})
    assert run["counts"]["vanished"] == sum(map(len, gone.values()))
    for cat_id in CATEGORIES:
        marked = db.products.find({f"vanished.{cat_id}": {"$exists": True}}, {"_id": 1})
        assert {d["_id"] for d in marked} == gone[cat_id]
    assert run["counts"]["pages"] == len(truth(env)[1])
    logs = [w.log for w in (*survivors, victim)]
    assert sum(log.count(COMPLETELY) for log in logs) == 1
    assert f"{run['counts']['vanished']} listings gone since earlier crawls" in "".join(logs)
