"""Fixtures of the cluster tests: a sandbox, workers and an empty Redis per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from tests.cluster import LIMIT, Env, Worker
from tests.crawling import TOKEN
from tests.servers import MongodProcess, RedisProcess
from tmapi_crawler.sandbox.process import SandboxProcess


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
    (``mongo_client``). ``redis_uri`` puts the cluster on another Redis (one the test restarts).
    """
    sandboxes: list[SandboxProcess] = []

    def start(redis_uri: str | None = None, **options: Any) -> Env:
        options = {"token": [TOKEN], "concurrency_limit": LIMIT, **options}
        sandbox = SandboxProcess(**options).start()
        sandboxes.append(sandbox)
        return Env(tmp_path, redis_uri or redis_server.uri, mongod.uri, mongo_db_name, sandbox)

    try:
        yield start
    finally:
        for sandbox in sandboxes:
            sandbox.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., list[Worker]]]:
    """Start workers; any still running at the end of the test is killed."""
    started: list[Worker] = []

    def start(env: Env, count: int, prefix: str = "worker", **settings: Any) -> list[Worker]:
        new = [Worker(env, f"{prefix}{len(started) + i}", **settings) for i in range(count)]
        started.extend(new)
        return new

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
