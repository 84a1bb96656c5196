"""A test cluster: real redis-server, mongod and sandbox; workers are real processes.

Every worker is ``SCRAPY_PROJECT=distributed scrapy crawl category_items`` in its own process,
as on separate machines; the sandbox enforces the account's concurrency limit and keeps a
record of every request, which is the ground truth for "fetched once" and "never over the
limit". Events are awaited by polling the sandbox's counters and Redis, never by sleeping.
Its fixtures are in ``tests/distributed/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from math import ceil
from pathlib import Path
from typing import Any, TypeVar

import pymongo
import redis
from scrapy.settings import Settings

from tests.crawling import PROJECT_ROOT, TOKEN, wait_until
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.distributed.status import read_status
from tmapi_crawler.sandbox.process import SandboxProcess

T = TypeVar("T")

#: A worker's progress line: the cluster's, as `scrapy status` shows it.
PROGRESS = re.compile(r"Progress: (queries \d+/\d+ \| pages \d+/\d+.*)$", re.MULTILINE)

CATEGORIES = (1, 2, 3)
LIMIT = 4
#: Short heartbeats, leases and idle times, so that deaths and the end of work show quickly.
WORKER_SETTINGS: dict[str, Any] = {
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


def cluster_settings(redis_uri: str, **overrides: Any) -> Settings:
    """The distributed profile with the test cluster's Redis and short timings."""
    settings = Settings()
    settings.setmodule("settings_profiles.distributed")
    settings.update({"REDIS_URL": redis_uri, **WORKER_SETTINGS, **overrides})
    return settings


def run_with(cluster: Cluster, coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop, closing the cluster's client inside it."""
    async def run() -> T:
        try:
            return await coroutine()
        finally:
            await cluster.aclose()

    return asyncio.run(run())


class Env:
    """What every process of one test's cluster shares: servers, database, API address."""

    def __init__(self, tmp_path: Path, redis_uri: str, mongo_uri: str, database: str,
                 sandbox: SandboxProcess) -> None:
        self.tmp_path = tmp_path
        self.sandbox = sandbox
        self.database = database
        self.redis_uri = redis_uri
        self.variables = {
            **os.environ,
            "SCRAPY_PROJECT": "distributed",
            "REDIS_URL": redis_uri,
            "MONGO_URI": mongo_uri,
            "MONGO_DATABASE": database,
            "TMAPI_TOKEN": TOKEN,
            "TMAPI_BASE_URL": sandbox.url,
        }
        self.cluster = Cluster(cluster_settings(redis_uri), "category_items")

    def status(self) -> dict[str, Any]:
        return run_with(self.cluster, lambda: read_status(self.cluster))

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

    def __init__(self, env: Env, name: str, *arguments: str, **settings: Any) -> None:
        self.stats_path = env.tmp_path / f"{name}.stats.json"
        self.log_path = env.tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "scrapy", "crawl", "category_items"]
        command += [f"-a{a}" for a in arguments]
        settings = {**WORKER_SETTINGS, "STATS_FILE": self.stats_path, **settings}
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


def joined_before_any_call(env: Env, workers: Callable[..., list[Worker]], count: int,
                           prefix: str = "worker", stall_after: int = 0,
                           **settings: Any) -> list[Worker]:
    """``count`` workers that all joined the crawl before its first call, so that each takes
    part and a signal sent mid-crawl reaches a crawling worker: a stand-in holds the account's
    permits until then. Started together, one could join, under load, after the others had
    crawled it all, or be interrupted before it had started.

    ``stall_after``: the sandbox holds its answers back once it has served that many pages
    (``stalled_mid_crawl``), armed before the first call: a fast crawl cannot run past it."""
    keys = env.cluster.limiter_keys
    held = [f"stand-in:{i}" for i in range(int(settings.get("TMAPI_CONCURRENCY", LIMIT)))]
    client = redis.Redis.from_url(env.redis_uri)
    try:
        seconds, _ = client.time()
        client.zadd(keys.permits, dict.fromkeys(held, (seconds + 600) * 1000))
        before = served(env)
        started = workers(env, count, prefix, **settings)
        wait_until(lambda: all("cluster crawl" in w.log for w in started),
                   "every worker joined")
        assert served(env) == before
        if stall_after:
            env.sandbox.configure(stall_after=stall_after)
        client.zrem(keys.permits, *held)
        client.publish(keys.released_channel, "released")
    finally:
        client.close()
    return started


def leases_of(env: Env, worker: Worker) -> int:
    return sum(w["leased"] for w in env.status()["workers"] if w["pid"] == worker.pid)


@contextmanager
def stalled_mid_crawl(env: Env, cluster: list[Worker], served_at_least: int
                      ) -> Iterator[tuple[Worker, list[Worker]]]:
    """Once the sandbox has served ``served_at_least`` pages — and held its answers back from
    there on: the cluster joined with ``stall_after=served_at_least`` — yield the worker
    holding the most leased pages (one to kill while it works) and the others.

    Stalled, no page is acknowledged or queued, so what a worker holds stays put while
    ``scrapy status`` looks. Stalling only once the test saw the count let a short crawl on a
    busy machine end first, every lease acknowledged. Which worker holds pages is not known in
    advance: one can hold none, the others having leased all there was. The answers flow
    again on leaving.
    """
    wait_until(lambda: served(env) >= served_at_least, "the crawl is under way")
    env.sandbox.configure(stalled=True)
    try:
        leased = {w["pid"]: w["leased"] for w in env.status()["workers"]}
        victim = max(cluster, key=lambda worker: leased.get(worker.pid, 0))
        assert leased[victim.pid] > 0, leased
        yield victim, [worker for worker in cluster if worker is not victim]
    finally:
        env.sandbox.configure(stalled=False, stall_after=0)


def redis_values(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key with every value it holds, whatever the type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "none":  # gone since the scan (a page's memo, dropped with its lease)
            continue
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
