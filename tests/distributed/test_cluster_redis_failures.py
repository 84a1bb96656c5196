"""When Redis fails under a running cluster: restarted with or without its append-only file,
or flushed. Each test runs its own redis-server, which it restarts.

The promises: a crawl whose state Redis lost is never reported ``finished`` (every worker exits
non-zero with ``redis_state_lost``); the account's limit holds throughout; with persistence
nothing is lost, and the permits in use when Redis went away come back as soon as it answers,
not when their lease expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest
import redis

from tests.cluster import (
    LIMIT,
    Env,
    Worker,
    finish,
    served,
    stored_products,
    truth,
    wait_until,
)
from tests.crawling import records
from tests.servers import RedisProcess


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """A redis-server of the test's own, which it may restart."""
    servers: list[RedisProcess] = []

    def start(*, persistent: bool) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis{len(servers)}", persistent=persistent).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def test_a_restart_without_persistence_stops_every_worker_naming_the_loss(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    own_redis: Callable[..., RedisProcess], mongo_client: pymongo.MongoClient,
) -> None:
    server = own_redis(persistent=False)
    env = start_env(redis_uri=server.uri, latency=0.1, default_size=600)
    seeded = env.seed("cat_id=1,2,3")
    assert seeded.returncode == 0
    assert "no append-only file" in seeded.stderr  # warned before anything was crawled
    cluster = workers(env, 3)
    wait_until(lambda: served(env) >= 12, "the crawl is under way")
    server.restart()

    assert finish(cluster) == ["redis_state_lost"] * 3
    assert [w.process.returncode for w in cluster] == [1, 1, 1]
    for worker in cluster:
        assert "no append-only file" in worker.log
        assert "Redis lost the state of cluster crawl" in worker.log
    stats = env.sandbox.stats()
    assert stats["peak_in_flight"] <= LIMIT
    assert stats["throttled"] == 0
    products, pages = truth(env)
    assert len(records(stats)) < len(pages)  # work was lost, and no worker claimed otherwise
    assert len(stored_products(env, mongo_client)) < len(products)
    status = env.status()
    assert status["state"] == "lost (restart)"
    # A worker started later does not take the remains for a whole crawl either.
    (late,) = workers(env, 1, prefix="late")
    assert finish([late]) == ["redis_state_lost"]
    assert late.process.returncode == 1
    # Seeding starts a new crawl.
    assert "into new crawl" in env.seed("cat_id=1").stdout


def test_a_flush_stops_every_worker_naming_the_loss(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    assert env.seed("cat_id=1,2,3").returncode == 0
    cluster = workers(env, 2)
    wait_until(lambda: served(env) >= 8, "the crawl is under way")
    redis_client.flushall()
    assert finish(cluster) == ["redis_state_lost"] * 2
    assert env.sandbox.stats()["peak_in_flight"] <= LIMIT
    assert env.status()["state"] == "lost (restart)"


def test_a_restart_with_persistence_loses_nothing_and_permits_come_back_at_once(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    own_redis: Callable[..., RedisProcess], mongo_client: pymongo.MongoClient,
) -> None:
    server = own_redis(persistent=True)
    env = start_env(redis_uri=server.uri, latency=0.1, default_size=600)
    seeded = env.seed("cat_id=1,2,3")
    assert seeded.returncode == 0
    assert "append-only" not in seeded.stderr
    # Permits are leased for far longer than the test may take: had the permits in use when
    # Redis went away waited for their lease, the crawl could not finish.
    cluster = workers(env, 3, TMAPI_LEASE_SECONDS=3600)
    wait_until(lambda: served(env) >= 12, "the crawl is under way")
    server.kill()  # a crash: nothing flushed on the way out but what appendfsync did
    server.start()

    assert finish(cluster) == ["finished"] * 3
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    stats = env.sandbox.stats()
    assert set(records(stats)) == pages
    assert stats["peak_in_flight"] <= LIMIT
    status = env.status()
    assert status["state"] == "finished"
    assert status["done"] == status["known"] == len(pages)
    assert status["limiter"]["permits_in_use"] == 0
