"""Distributed crawling end to end: real workers, Redis, MongoDB and sandbox (``tests/cluster.py``).

What a cluster promises: every page fetched once, never more than the limit in flight, nothing
lost when a worker dies, a quota that stops every worker, nothing secret or executable in
Redis, and one truth about progress in ``scrapy status`` and in the workers' logs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pymongo
import redis
from scrapy.utils.test import get_crawler

from tests.cluster import (
    CATEGORIES,
    LIMIT,
    PROGRESS,
    Env,
    Worker,
    assert_no_secret_or_pickle,
    cluster_settings,
    finish,
    joined_before_any_call,
    leases_of,
    run_with,
    served,
    stalled_mid_crawl,
    stored_products,
    truth,
    wait_until,
)
from tests.crawling import TOKEN, records
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.distributed import entries
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.spiders.category_items import CategoryItemsSpider
from tmapi_crawler.storage import spool
from tmapi_crawler.storage.collections import SPOOL
from tmapi_crawler.transport import credentials


def test_seed_validates_like_crawl_and_sends_nothing(
    start_env: Callable[..., Env], redis_client: redis.Redis
) -> None:
    env = start_env()
    for arguments, message in [
        ((), "error: cat_id: missing"),
        (("cat_id=1", "sort=cheapest"), "error: sort: 'cheapest' is not one of"),
    ]:
        result = env.seed(*arguments)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(message)
    local = env.seed("cat_id=1", profile="default")
    assert local.returncode == 2
    assert "SCRAPY_PROJECT=distributed" in local.stderr
    assert redis_client.dbsize() == 0

    result = env.seed("cat_id=1,2,3", env={"TMAPI_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    crawl_id = env.status()["crawl_id"]
    assert result.stdout.startswith(f"queued 3 of 3 queries into new crawl {crawl_id} ")
    again = env.seed("cat_id=3,4", env={"TMAPI_TOKEN": ""})
    assert again.stdout.startswith(f"queued 1 of 2 queries (1 already in the crawl) "
                                   f"into running crawl {crawl_id} ")
    status = env.status()
    assert (status["queued"], status["known"], status["state"]) == (4, 4, "waiting for workers")
    # The queries each seed began add up: the cluster's progress knows the planned total.
    assert status["cluster_progress"]["queries"] == 4
    assert status["cluster_progress"]["line"].startswith("queries 0/4 | pages 0/4 ")
    assert env.sandbox.stats()["requests"] == 0


def test_three_workers_crawl_everything_once_within_the_limit(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.05, default_size=400)
    assert env.seed("cat_id=1,2,3").returncode == 0
    crawl_id = env.status()["crawl_id"]
    cluster = joined_before_any_call(env, workers, 3, TMAPI_PROGRESS_INTERVAL=0.2)
    # While they crawl, `scrapy status` never shows pages done without the products that go
    # with them (a page is done once its 20 products are stored).
    seen = []
    while any(w.process.poll() is None for w in cluster):
        status = env.status()
        progress = status["cluster_progress"]
        assert progress["pages_done"] == status["done"] + status["failed"]
        assert progress["pages_known"] == status["known"]
        assert progress["items"] >= 20 * status["done"], status
        seen.append(status["done"])
    assert finish(cluster) == ["finished"] * 3
    assert seen == sorted(seen)

    products, pages = truth(env)
    stored = stored_products(env, mongo_client)
    assert sorted(stored) == sorted(products)
    stats = env.sandbox.stats()
    assert sorted(records(stats)) == sorted(pages)  # each page fetched exactly once
    assert stats["peak_in_flight"] == LIMIT  # reached, and never over
    assert stats["throttled"] == 0
    # Every page went through the shared queue; which worker took it is the machine's timing
    # (a worker that starts last may find nothing left), so no worker is required to.
    assert sum(w.stats.get("scheduler/dequeued/redis", 0) for w in cluster) >= len(pages)
    db = mongo_client[env.database]
    assert db.products.distinct("first_crawl_id") == [crawl_id]
    (run,) = db.crawl_runs.find()
    assert run["_id"] == crawl_id
    assert len(run["workers"]) == 3
    assert run["counts"]["pages"] == len(pages)
    status = env.status()
    assert status["state"] == "finished"
    assert (status["queued"], status["in_flight"], status["failed"]) == (0, 0, 0)
    assert status["done"] == status["known"] == len(pages)
    assert {w["state"] for w in status["workers"]} == {"exited"}
    assert b"tmapi:category_items:dupefilter" in assert_no_secret_or_pickle(redis_client)
    shown = env.scrapy("status", "category_items", "--json")
    assert shown.returncode == 0, shown.stderr
    summed = json.loads(shown.stdout)
    assert summed["crawl_id"] == crawl_id
    assert summed["cluster_progress"]["pages_done"] == len(pages)
    # A worker that took no page stored nothing and has no items stat at all.
    assert summed["cluster_progress"]["items"] == sum(
        w.stats.get(stats_keys.ITEMS, 0) for w in cluster)
    # Ended: no ETA, and no rate (not 0.0 pages/s).
    assert (summed["cluster_progress"]["eta"], summed["cluster_progress"]["rate"]) == (None, None)
    text = env.scrapy("status", "category_items").stdout
    assert f"crawl {crawl_id}: finished" in text
    assert f"queries 3/3 | pages {len(pages)}/{len(pages)} (100.0%)" in text
    assert "ETA" not in text
    assert "pages/s" not in text
    # Each worker logged the cluster's line, and its last one, written when all was done,
    # says so, with no ETA.
    for worker in cluster:
        lines = PROGRESS.findall(worker.log)
        assert lines, worker.log[-2000:]
        assert lines[-1].startswith(f"queries 3/3 | pages {len(pages)}/{len(pages)} (100.0%)")
        assert "ETA" not in lines[-1]


def test_a_killed_worker_loses_nothing(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    assert env.seed("cat_id=1,2,3").returncode == 0
    cluster = joined_before_any_call(env, workers, 3, stall_after=10)
    with stalled_mid_crawl(env, cluster, 10) as (victim, survivors):
        assert_no_secret_or_pickle(redis_client)  # mid-crawl: leases and permits are there too
        victim.signal(signal.SIGKILL)
        victim.wait()
        held = leases_of(env, victim)
    assert held > 0
    spooled = {(c.query.cat_id, c.page) for c in (
        PageContext.from_dict(doc["page"])
        for doc in mongo_client[env.database][SPOOL].find({}, {"page": 1}))}
    assert finish(survivors) == ["finished"] * 2
    # Paid for but not stored at the kill: delivered again, it is handed back from the spool.
    billed_twice = [page for page, n in Counter((r[0], r[3]) for r in records(
        env.sandbox.stats())).items() if n > 1]
    assert not spooled & set(billed_twice)

    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert set(records(env.sandbox.stats())) == pages
    assert sum(w.stats.get("tmapi/distributed/reaped", 0) for w in survivors) == held
    status = env.status()
    assert (status["queued"], status["in_flight"], status["in_flight_lost"]) == (0, 0, 0)
    assert (status["failed"], status["done"]) == (0, len(pages))
    assert [w["state"] for w in status["workers"] if w["pid"] == victim.pid] == ["lost"]
    # What it acknowledged before it died is counted, and nothing twice.
    assert status["cluster_progress"]["pages_done"] == len(pages)
    assert status["cluster_progress"]["items"] >= 20 * len(pages)


def test_a_page_a_dead_worker_paid_for_is_handed_back_not_paid_again(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    """A worker leased page 1, paid for it, spooled the answer and died before storing it:
    the queue delivers the page again, and the next worker is handed the spooled answer."""
    env = start_env(latency=0.05, default_size=60)
    assert env.seed(f"cat_id={','.join(map(str, CATEGORIES))}").returncode == 0
    spider = CategoryItemsSpider.from_crawler(get_crawler(CategoryItemsSpider, dict(
        cluster_settings(env.redis_uri, TMAPI_BASE_URL=env.sandbox.url,
                         TWISTED_REACTOR_ENABLED=False))))

    # The dead worker, alive (a long heartbeat) until it has spooled the answer: a real worker
    # taking its lease back before that would rightly pay for the page.
    ghost = Cluster(cluster_settings(env.redis_uri, TMAPI_HEARTBEAT_TTL=300), "category_items")

    async def lease() -> tuple[str, PageContext]:
        crawl_id, _ = await ghost.begin_crawl(renew=False, worker_info={"state": "running"})
        (leased,) = await ghost.queue(crawl_id, ghost.worker_id).pop(1)
        return crawl_id, entries.decode(leased.entry)[0]

    async def pay_and_die(crawl_id: str, context: PageContext) -> None:
        url = credentials.signed_url(spider.page_request(context).url, TOKEN)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
        client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
            env.variables["MONGO_URI"])
        try:
            dead = spool.Spool.of(get_crawler(settings_dict={"TWISTED_REACTOR_ENABLED": False}))
            await dead.open(client[env.database], crawl_id, resumed=False, distributed=True)
            await dead.keep(context.key, context.to_dict(), body, status=200,
                            encoding="utf-8", calls=1)
        finally:
            await client.close()
        await ghost.client.delete(ghost.keys.alive(ghost.worker_id))  # its heartbeat expired

    crawl_id, context = run_with(ghost, lease)
    (worker,) = workers(env, 1)
    wait_until(lambda: "cluster crawl" in worker.log, "the worker joined")  # spool open
    run_with(ghost, lambda: pay_and_die(crawl_id, context))
    assert finish([worker]) == ["finished"]
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert Counter(records(env.sandbox.stats())) == dict.fromkeys(pages, 1)
    assert worker.stats[stats_keys.SPOOL_REPLAYED] == 1
    assert worker.stats[stats_keys.DISTRIBUTED_REAPED] == 1


def test_stopped_workers_resume_without_fetching_a_page_twice(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    assert env.seed("cat_id=1,2,3").returncode == 0
    first = joined_before_any_call(env, workers, 3)
    wait_until(lambda: served(env) >= 20, "the crawl is under way")
    for worker in first:
        worker.signal(signal.SIGINT)
    assert finish(first) == ["shutdown"] * 3
    stopped = env.status()
    assert stopped["queued"] > 0
    assert (stopped["in_flight"], stopped["in_flight_lost"], stopped["failed"]) == (0, 0, 0)
    fetched_before = served(env)

    second = workers(env, 3, prefix="again")
    assert finish(second) == ["finished"] * 3
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    billed = Counter(records(env.sandbox.stats()))
    assert set(billed) == pages
    assert max(billed.values()) == 1  # nothing the first run fetched was fetched again
    assert fetched_before < len(pages)
    assert env.status()["done"] == len(pages)


def test_quota_stops_every_worker_and_keeps_the_queue(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.05, default_size=600, quota=25)
    assert env.seed("cat_id=1,2,3").returncode == 0
    cluster = workers(env, 3)
    assert finish(cluster) == ["tmapi_quota_exhausted"] * 3
    assert sum(1 for w in cluster if w.stats.get("tmapi/answers/439")) >= 1
    status = env.status()
    assert status["state"] == "stopped (tmapi_quota_exhausted)"
    assert status["queued"] > 0
    assert (status["in_flight"], status["in_flight_lost"], status["failed"]) == (0, 0, 0)
    assert status["stop"]["reason"] == "tmapi_quota_exhausted"
    assert status["done"] == served(env)
    assert_no_secret_or_pickle(redis_client)

    env.sandbox.configure(quota=0)  # the balance was topped up: starting workers resumes
    assert finish(workers(env, 2, prefix="resumed")) == ["finished"] * 2
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    billed = Counter(records(env.sandbox.stats()))
    assert set(billed) == pages
    assert max(billed.values()) == 1


def test_redis_holds_no_token_and_no_pickle(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.1, default_size=300)
    assert env.seed("cat_id=1,2,3").returncode == 0
    # Held mid-crawl, so that leases and permits are certainly there while Redis is read.
    cluster = joined_before_any_call(env, workers, 2, stall_after=10)
    with stalled_mid_crawl(env, cluster, 10):
        wait_until(lambda: env.status()["in_flight"] and
                   env.status()["limiter"]["permits_in_use"],
                   "requests are leased and permits held")
        during = assert_no_secret_or_pickle(redis_client)
    assert {b"tmapi:category_items:dupefilter", b"tmapi:limiter:permits"} <= during
    assert any(key.startswith(b"tmapi:category_items:leases:") for key in during)
    assert finish(cluster) == ["finished"] * 2
    assert b"tmapi:category_items:crawl" in assert_no_secret_or_pickle(redis_client)


def test_503s_lower_the_limit_of_the_whole_cluster_until_the_crawl_ends(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.05, default_size=300, concurrency_limit=2)  # below TMAPI_CONCURRENCY
    assert env.seed("cat_id=1,2,3").returncode == 0
    # Held mid-crawl (the limit is reset once the crawl completes); 503s still come.
    cluster = joined_before_any_call(env, workers, 2, stall_after=10)
    with stalled_mid_crawl(env, cluster, 10):
        # Shared: how far it goes depends on how many 503s arrive together (each takes one
        # slot off), so any value below the maximum is right.
        wait_until(lambda: 1 <= (env.status()["limiter"]["limit"] or LIMIT) < LIMIT,
                   "503s lowered the shared limit")
    assert finish(cluster) == ["finished"] * 2
    assert sum(w.stats.get("tmapi/throttle/decreases", 0) for w in cluster) >= LIMIT - 2
    # Reset once the crawl completed: the next crawl starts at the account's full limit.
    assert env.status()["limiter"]["limit"] is None
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert set(records(env.sandbox.stats())) == pages

    # A limit some other run left lowered is reset when a new crawl is seeded too.
    redis_client.set("tmapi:limiter:limit", 1)
    assert "into new crawl" in env.seed("cat_id=1").stdout
    assert env.status()["limiter"]["limit"] is None
