"""A cluster crawl whose state Redis lost is resumed by ``scrapy seed`` (issues 11 and 13).

Real workers crawl, stop mid-crawl (Ctrl-C, or the quota), Redis is flushed, and the same
``scrapy seed`` resumes the crawl from MongoDB: it replays the frontier over the pages the
ledger holds and queues only the rest, under the same crawl id. The sandbox's records are the
ground truth for "paid twice".
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Callable

import pymongo
import pytest
import redis

from tests.cluster import (
    CATEGORIES,
    Env,
    Worker,
    cluster_settings,
    finish,
    joined_before_any_call,
    run_with,
    served,
    stored_products,
    truth,
    wait_until,
)
from tests.crawling import records
from tests.servers import RedisProcess
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.distributed.cluster import Cluster, Completion
from tmapi_crawler.servers import free_port

PLAN = "cat_id=1,2,3"
REASONS = {"sigint": "shutdown", "quota": "tmapi_quota_exhausted", "flush": "redis_state_lost"}
RESUMED = re.compile(r"^resumed crawl (\S+): (\d+) pages already held \(replayed free, "
                     r"(\d+) calls saved\), (\d+) pages queued at ", re.MULTILINE)


def paid_twice(env: Env) -> int:
    """Pages the server billed more than once, over every run of the test."""
    return sum(n - 1 for n in Counter(records(env.sandbox.stats())).values() if n > 1)


def interrupt(env: Env, cluster: list[Worker], redis_client: redis.Redis, interruption: str,
              pages: int) -> int:
    """Let the workers crawl part of the pages, then stop them: Ctrl-C, the quota (set
    before they start), or Redis flushed under them. The pages in flight at the stop are
    answered after it (none is sent after it): how many."""
    wait_until(lambda: served(env) >= pages // 3, "the crawl is under way")
    at_stop = served(env)
    if interruption == "sigint":
        for worker in cluster:
            worker.signal(signal.SIGINT)
    elif interruption == "flush":
        redis_client.flushall()
    assert finish(cluster) == [REASONS[interruption]] * 2
    stopped = served(env)
    assert stopped < pages
    return stopped - at_stop if interruption != "quota" else 0


@pytest.mark.parametrize("interruption", ["sigint", "quota", "flush"])
def test_a_crawl_redis_lost_is_resumed_by_seed_without_paying_twice(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    redis_client: redis.Redis, mongo_client: pymongo.MongoClient, interruption: str,
) -> None:
    env = start_env(latency=0.05, default_size=600)
    db = mongo_client[env.database]
    products, pages = truth(env)
    first = env.seed(PLAN)
    assert first.returncode == 0, first.stderr
    crawl_id = env.status()["crawl_id"]
    assert f"into new crawl {crawl_id}" in first.stdout
    assert db.crawl_runs.find_one({"_id": crawl_id})["plan_fingerprint"]
    if interruption == "quota":
        env.sandbox.configure(quota=len(pages) // 2)

    in_flight = interrupt(env, joined_before_any_call(env, workers, 2), redis_client,
                          interruption, len(pages))
    held_before = db.crawl_pages.count_documents({"crawl_id": crawl_id, "state": "stored"})
    assert held_before > 0
    assert db.crawl_runs.find_one({"_id": crawl_id})["finish_reason"] == REASONS[interruption]

    # Redis loses everything; the same seed resumes the crawl.
    redis_client.flushall()
    env.sandbox.configure(quota=0)
    second = env.seed(PLAN)
    assert second.returncode == 0, second.stderr
    match = RESUMED.search(second.stdout)
    assert match is not None, second.stdout
    resumed_id, held, saved, queued = match[1], *map(int, match.groups()[1:])
    assert resumed_id == crawl_id
    assert held == held_before
    assert saved == held  # one call per page: the sandbox injects no failures here
    status = env.status()
    assert (status["crawl_id"], status["queued"]) == (crawl_id, queued)
    assert 0 < queued < len(pages)

    rest = workers(env, 2, "resumed")
    assert finish(rest) == ["finished"] * 2
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    billed = records(env.sandbox.stats())
    assert set(billed) == pages
    assert paid_twice(env) <= in_flight
    assert len(billed) == len(pages) + paid_twice(env)
    # The cluster's count of queries over both runs (the seed's replay begins, and ends, those
    # of the pages held): each query once, and all of them done.
    progress = env.status()["cluster_progress"]
    queries = len({page[:3] for page in pages})
    assert (progress["queries"], progress["queries_done"]) == (queries, queries)
    # One record of the crawl, finished, with its resume.
    (run,) = db.crawl_runs.find()
    assert run["_id"] == crawl_id
    assert (run["status"], run["finish_reason"]) == ("closed", "finished")
    (resume,) = run["resumes"]
    assert (resume["pages_held"], resume["pages_queued"]) == (held, queued)
    # What it cost over both runs: every call the server saw; what the resume saved.
    assert run["cost"]["calls"] == env.sandbox.stats()["requests"]
    assert run["cost"]["saved_by_resume"] == saved
    for worker in rest:
        assert worker.stats[stats_keys.CRAWL_ID] == crawl_id


def test_a_resumed_crawl_marks_vanished_products_as_an_uninterrupted_one(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    redis_client: redis.Redis, mongo_client: pymongo.MongoClient,
) -> None:
    """A category crawled whole before the loss (no worker takes a page of it after the
    resume) is still seen whole at the cluster's end: the seed reports what it replayed."""
    env = start_env(latency=0.1, default_size=600, size={"1": 60})
    db = mongo_client[env.database]
    assert env.seed(PLAN).returncode == 0
    assert finish(workers(env, 2, "complete")) == ["finished"] * 2
    listed = {c: set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    env.sandbox.configure(sizes={"1": 40})  # category 2 shares some of category 1's products
    gone = {c: listed[c] - set(env.sandbox.truth(cat_id=c)["item_ids"]) for c in CATEGORIES}
    assert len(gone[1]) == 20

    seeded = env.seed(PLAN)
    assert "into new crawl" in seeded.stdout
    crawl_id = env.status()["crawl_id"]
    cluster = joined_before_any_call(env, workers, 2, "interrupted")
    wait_until(lambda: db.crawl_pages.count_documents(
        {"crawl_id": crawl_id, "cat_id": 1, "state": "stored"}) == 2,
        "category 1 is held whole")
    for worker in cluster:
        worker.signal(signal.SIGINT)
    assert finish(cluster) == ["shutdown"] * 2
    redis_client.flushall()
    category_1 = sum(1 for page in records(env.sandbox.stats()) if page[0] == 1)
    assert env.seed(PLAN).stdout.startswith(f"resumed crawl {crawl_id}:")
    rest = workers(env, 2, "resumed")
    assert finish(rest) == ["finished"] * 2
    # No page of category 1 was fetched after the resume.
    assert sum(1 for page in records(env.sandbox.stats()) if page[0] == 1) == category_1
    logs = "".join(worker.log for worker in rest)
    assert logs.count("Crawled completely: categories 1, 2, 3;") == 1
    for cat_id in CATEGORIES:
        marked = db.products.find({f"vanished.{cat_id}": {"$exists": True}}, {"_id": 1})
        assert {d["_id"] for d in marked} == gone[cat_id]
    run = db.crawl_runs.find_one({"_id": crawl_id})
    assert run["counts"]["vanished"] == sum(map(len, gone.values()))


def test_fresh_true_seeds_a_new_crawl_and_a_resume_takes_the_last_crawl_of_the_plan(
    start_env: Callable[..., Env], redis_client: redis.Redis,
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env()
    db = mongo_client[env.database]
    first = env.seed("cat_id=1,2")
    assert first.returncode == 0, first.stderr
    lost = env.status()["crawl_id"]
    redis_client.flushall()

    fresh = env.seed("cat_id=1,2", "fresh=true")
    assert fresh.returncode == 0, fresh.stderr
    new = env.status()["crawl_id"]
    assert new != lost
    assert f"queued 2 of 2 queries into new crawl {new}" in fresh.stdout
    assert env.status()["queued"] == 2
    assert db.crawl_runs.count_documents({}) == 2
    assert db.crawl_runs.count_documents({"resumes": {"$exists": True}}) == 0
    fingerprints = {run["plan_fingerprint"] for run in db.crawl_runs.find()}
    assert len(fingerprints) == 1
    assert None not in fingerprints

    # Lost again: the plan's last crawl (the fresh one) is resumed; nothing of it is held.
    redis_client.flushall()
    again = env.seed("cat_id=1,2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"resumed crawl {new}: 0 pages already held "
                                   "(replayed free, 0 calls saved), 2 pages queued at ")
    assert env.status()["crawl_id"] == new
    assert len(db.crawl_runs.find_one({"_id": new})["resumes"]) == 1
    # A different plan is not resumed from it.
    redis_client.flushall()
    other = env.seed("cat_id=3")
    assert other.stdout.startswith("queued 1 of 1 queries into new crawl ")
    assert env.status()["crawl_id"] not in (lost, new)


def test_seed_without_mongodb_queues_nothing(
    start_env: Callable[..., Env], redis_client: redis.Redis,
) -> None:
    env = start_env()
    result = env.seed(PLAN, env={"MONGO_URI": f"mongodb://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: MongoDB not reachable")
    assert result.stderr.rstrip().endswith("nothing was queued")
    assert redis_client.keys("*") == []


def test_no_worker_ends_the_crawl_while_a_seed_is_at_work(
    redis_server: RedisProcess, redis_client: redis.Redis,
) -> None:
    """A seed replaying a long ledger leaves the queue empty a while: a worker idle meanwhile
    must not take that for the crawl's end."""
    cluster = Cluster(cluster_settings(redis_server.uri), "category_items")

    async def scenario() -> tuple[Completion | None, Completion | None]:
        crawl_id, fresh = await cluster.begin_crawl(renew=True, worker_info=None, seeding=60)
        assert fresh
        while_seeding = await cluster.complete(crawl_id)
        await cluster.seeding(crawl_id, 0)
        return while_seeding, await cluster.complete(crawl_id)

    while_seeding, after = run_with(cluster, scenario)
    assert while_seeding is None
    assert after == Completion(lost=False, finaliser=True, missing=0)
