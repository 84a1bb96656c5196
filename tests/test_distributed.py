"""Distributed crawling: real redis-server, mongod and sandbox; workers are real processes.

Every worker is ``SCRAPY_PROJECT=distributed scrapy crawl category_items`` in its own process,
as on separate machines; the sandbox enforces the account's concurrency limit and keeps a
record of every request, which is the ground truth for "fetched once" and "never over the
limit". Events are awaited by polling the sandbox's counters and Redis, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from math import ceil
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from scrapy.http import Request
from scrapy.settings import Settings
from scrapy.utils.request import request_from_dict

from tests.crawling import PROJECT_ROOT, TOKEN, records
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.status import read_status
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import MongodProcess, RedisProcess

CATEGORIES = (1, 2, 3)
LIMIT = 4
#: Short heartbeats, leases and idle times, so that deaths and the end of work show quickly.
WORKER_SETTINGS = {
    "LOG_LEVEL": "INFO",
    "TMAPI_CONCURRENCY": LIMIT,
    "TMAPI_RETRY_BASE_DELAY": 0.01,
    "TMAPI_RETRY_MAX_DELAY": 0.05,
    "MONGO_FLUSH_INTERVAL": 0.2,
    "MAX_IDLE_TIME_BEFORE_CLOSE": 1,
    "TMAPI_HEARTBEAT_INTERVAL": 0.3,
    "TMAPI_HEARTBEAT_TTL": 2,
    "TMAPI_LEASE_SECONDS": 5,
    "TMAPI_QUEUE_POLL_INTERVAL": 0.05,
}
PROCESS_TIMEOUT = 120


class Env:
    """What every process of one test's cluster shares: servers, database, API address."""

    def __init__(self, tmp_path: Path, redis_uri: str, mongo_uri: str, database: str,
                 sandbox: SandboxProcess) -> None:
        self.tmp_path = tmp_path
        self.sandbox = sandbox
        self.database = database
        self.variables = {
            **os.environ,
            "SCRAPY_PROJECT": "distributed",
            "REDIS_URL": redis_uri,
            "MONGO_URI": mongo_uri,
            "MONGO_DATABASE": database,
            "TMAPI_TOKEN": TOKEN,
            "TMAPI_BASE_URL": sandbox.url,
        }
        settings = Settings()
        settings.setmodule("settings_profiles.distributed")
        settings.update({"REDIS_URL": redis_uri, **WORKER_SETTINGS})
        self.cluster = Cluster(settings, "category_items")

    def status(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            try:
                return await read_status(self.cluster)
            finally:
                await self.cluster.aclose()

        return asyncio.run(read())

    def scrapy(self, *args: str, env: dict[str, str] | None = None,
               profile: str = "distributed") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scrapy", *args], cwd=PROJECT_ROOT, capture_output=True,
            text=True, timeout=PROCESS_TIMEOUT, check=False,
            env={**self.variables, "SCRAPY_PROJECT": profile, **(env or {})},
        )

    def seed(self, *arguments: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.scrapy("seed", "category_items", *(f"-a{a}" for a in arguments), **kwargs)


class Worker:
    """One ``scrapy crawl category_items`` process, its log and its final stats."""

    def __init__(self, env: Env, name: str, *arguments: str) -> None:
        self.stats_path = env.tmp_path / f"{name}.stats.json"
        self.log_path = env.tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "scrapy", "crawl", "category_items"]
        command += [f"-a{a}" for a in arguments]
        settings = {**WORKER_SETTINGS, "STATS_FILE": self.stats_path}
        for setting, value in settings.items():
            command += ["-s", f"{setting}={value}"]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env.variables, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self) -> int:
        return self.process.wait(timeout=PROCESS_TIMEOUT)

    @property
    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    """The session's redis-server, empty at the start of each test."""
    client = redis.Redis.from_url(redis_server.uri)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def start_env(
    tmp_path: Path, *, redis_server: RedisProcess, redis_client: redis.Redis,
    mongod: MongodProcess, mongo_db_name: str, mongo_client: pymongo.MongoClient,
) -> Iterator[Callable[..., Env]]:
    """Start a sandbox with the given options and return the cluster's environment.

    Redis starts empty (``redis_client``); the test's database is dropped afterwards
    (``mongo_client``).
    """
    sandboxes: list[SandboxProcess] = []
    envs: list[Env] = []

    def start(**options: Any) -> Env:
        options = {"token": [TOKEN], "concurrency_limit": LIMIT, **options}
        sandbox = SandboxProcess(**options).start()
        sandboxes.append(sandbox)
        env = Env(tmp_path, redis_server.uri, mongod.uri, mongo_db_name, sandbox)
        envs.append(env)
        return env

    try:
        yield start
    finally:
        for sandbox in sandboxes:
            sandbox.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., list[Worker]]]:
    """Start workers; any still running at the end of the test is killed."""
    started: list[Worker] = []

    def start(env: Env, count: int, prefix: str = "worker") -> list[Worker]:
        new = [Worker(env, f"{prefix}{len(started) + i}") for i in range(count)]
        started.extend(new)
        return new

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` until it is truthy (the event it describes happened)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)
    return result


def finish(workers: list[Worker]) -> list[str]:
    """Wait for the workers to exit; their finish reasons."""
    for worker in workers:
        worker.wait()
    for worker in workers:
        if not worker.stats_path.exists():
            raise AssertionError(f"{worker.log_path.name} left no stats:\n{worker.log[-3000:]}")
    return [worker.stats.get("finish_reason", "") for worker in workers]


def truth(env: Env) -> tuple[set[int], set[tuple[int, str, str, int]]]:
    """Every product of the categories, and every page a complete crawl must fetch once."""
    products: set[int] = set()
    pages: set[tuple[int, str, str, int]] = set()
    for cat_id in CATEGORIES:
        known = env.sandbox.truth(cat_id=cat_id)
        products.update(known["item_ids"])
        pages.update((cat_id, "en", "default", p) for p in range(1, ceil(known["total"] / 20) + 1))
    return products, pages


def stored_products(env: Env, mongo_client: pymongo.MongoClient) -> list[int]:
    return [doc["_id"] for doc in mongo_client[env.database].products.find({}, {"_id": 1})]


def served(env: Env) -> int:
    return int(env.sandbox.stats(records=False)["pages_served"])


def leases_of(env: Env, worker: Worker) -> int:
    return sum(w["leased"] for w in env.status()["workers"] if w["pid"] == worker.pid)


def redis_values(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key with every value it holds, whatever the type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
        for value in values:
            yield key, value


def assert_no_secret_or_pickle(client: redis.Redis) -> set[bytes]:
    """Nothing in Redis holds the token, and every value is JSON or plain text; the keys."""
    keys = set()
    for key, value in redis_values(client):
        keys.add(key)
        assert TOKEN.encode() not in key + value, key
        assert not value.startswith(b"\x80"), f"pickle in {key!r}"
        text = value.decode("utf-8")
        try:
            json.loads(text)
        except ValueError:
            assert text.isprintable(), f"{key!r} holds {text[:80]!r}"
    return keys


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
    assert env.sandbox.stats()["requests"] == 0


def test_three_workers_crawl_everything_once_within_the_limit(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.05, default_size=400)
    assert env.seed("cat_id=1,2,3").returncode == 0
    crawl_id = env.status()["crawl_id"]
    cluster = workers(env, 3)
    assert finish(cluster) == ["finished"] * 3

    products, pages = truth(env)
    stored = stored_products(env, mongo_client)
    assert sorted(stored) == sorted(products)
    stats = env.sandbox.stats()
    assert set(records(stats)) == pages
    assert stats["peak_in_flight"] == LIMIT  # reached, and never over
    assert stats["throttled"] == 0
    assert all(w.stats["scheduler/dequeued/redis"] > 0 for w in cluster)  # all took part
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
    assert b"tmapi:category_items:dupefilter" in assert_no_secret_or_pickle(redis_client)
    shown = env.scrapy("status", "category_items", "--json")
    assert shown.returncode == 0, shown.stderr
    summed = json.loads(shown.stdout)["cluster_progress"]
    assert summed["crawl_id"] == crawl_id
    assert summed["pages_done"] == len(pages)
    assert summed["items"] == sum(w.stats["tmapi/items"] for w in cluster)
    text = env.scrapy("status", "category_items").stdout
    assert f"crawl {crawl_id}: finished" in text
    assert f"pages {len(pages)}/{len(pages)} (100.0%)" in text


def test_a_killed_worker_loses_nothing(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient, redis_client: redis.Redis,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    assert env.seed("cat_id=1,2,3").returncode == 0
    victim, *survivors = workers(env, 3)
    wait_until(lambda: served(env) >= 10 and leases_of(env, victim) > 0,
               "the victim is working on leased pages")
    assert_no_secret_or_pickle(redis_client)  # mid-crawl: leases and permits are there too
    victim.signal(signal.SIGKILL)
    victim.wait()
    held = leases_of(env, victim)
    assert held > 0
    assert finish(survivors) == ["finished"] * 2

    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert set(records(env.sandbox.stats())) == pages
    assert sum(w.stats.get("tmapi/distributed/reaped", 0) for w in survivors) == held
    status = env.status()
    assert (status["queued"], status["in_flight"], status["in_flight_lost"]) == (0, 0, 0)
    assert (status["failed"], status["done"]) == (0, len(pages))
    assert [w["state"] for w in status["workers"] if w["pid"] == victim.pid] == ["lost"]


def test_stopped_workers_resume_without_fetching_a_page_twice(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.1, default_size=600)
    assert env.seed("cat_id=1,2,3").returncode == 0
    first = workers(env, 3)
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
    cluster = workers(env, 2)
    wait_until(lambda: env.status()["in_flight"] and env.status()["limiter"]["permits_in_use"],
               "requests are leased and permits held")
    during = assert_no_secret_or_pickle(redis_client)
    assert {b"tmapi:category_items:dupefilter", b"tmapi:limiter:permits"} <= during
    assert any(key.startswith(b"tmapi:category_items:leases:") for key in during)
    assert finish(cluster) == ["finished"] * 2
    assert b"tmapi:category_items:crawl" in assert_no_secret_or_pickle(redis_client)


def test_503s_lower_the_limit_of_the_whole_cluster(
    start_env: Callable[..., Env], workers: Callable[..., list[Worker]],
    mongo_client: pymongo.MongoClient,
) -> None:
    env = start_env(latency=0.05, default_size=300, concurrency_limit=2)  # below TMAPI_CONCURRENCY
    assert env.seed("cat_id=1,2,3").returncode == 0
    cluster = workers(env, 2)
    assert finish(cluster) == ["finished"] * 2
    assert sum(w.stats.get("tmapi/throttle/decreases", 0) for w in cluster) >= LIMIT - 2
    # Shared, and still lowered. How far it went depends on how many 503s arrived together
    # (each takes one slot off), so any value below the maximum is right.
    assert 1 <= env.status()["limiter"]["limit"] < LIMIT
    products, pages = truth(env)
    assert sorted(stored_products(env, mongo_client)) == sorted(products)
    assert set(records(env.sandbox.stats())) == pages
