"""Shared fixtures: real servers for the whole session, isolation per test.

One mongod and one redis-server per session (per xdist worker) keep the suite fast; each
test gets its own database name instead. A test that kills or restarts a server must start
its own ``MongodProcess``/``RedisProcess``, never the shared ones.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    # `.venv/bin/pytest` puts only tests/ on sys.path; the package lives one level up.
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.servers import MongodProcess, RedisProcess  # noqa: E402
from tests.web_data import Crawled, crawl_twice  # noqa: E402
from tmapi_crawler.sandbox.config import RUNTIME_SETTINGS, SandboxConfig  # noqa: E402
from tmapi_crawler.sandbox.process import SandboxProcess  # noqa: E402

#: The sandbox's runtime settings as it starts: what a test's changes are undone to.
SANDBOX_DEFAULTS = {name: getattr(SandboxConfig(), name) for name in RUNTIME_SETTINGS}


@pytest.fixture(autouse=True)
def _project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_project_settings()`` exports ``SCRAPY_SETTINGS_MODULE``: undone after each test, or
    crawler subprocesses of later tests inherit the profile it picked."""
    monkeypatch.setenv("SCRAPY_SETTINGS_MODULE", "")
    monkeypatch.delenv("SCRAPY_SETTINGS_MODULE")


# Servers.


@pytest.fixture(scope="session")
def mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongodProcess]:
    """A mongod shared by the session; use ``mongo_db_name`` to stay out of other tests' way."""
    with MongodProcess(tmp_path_factory.mktemp("mongod")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server shared by the session (in-memory, no persistence)."""
    with RedisProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server


# MongoDB isolation.


@pytest.fixture
def mongo_db_name(request: pytest.FixtureRequest) -> str:
    """A database name no other test uses, readable enough to trace back to its test."""
    stem = re.sub(r"\W+", "_", request.node.name)[:40]
    return f"t_{stem}_{secrets.token_hex(4)}"


@pytest.fixture
def mongo_client(mongod: MongodProcess, mongo_db_name: str) -> Iterator[pymongo.MongoClient]:
    """A client of the session mongod; the test's database is dropped afterwards."""
    client: pymongo.MongoClient = pymongo.MongoClient(mongod.uri, serverSelectionTimeoutMS=5000)
    try:
        yield client
        client.drop_database(mongo_db_name)
    finally:
        client.close()


# The API sandbox: a module defines ``server`` (its catalogue, started once); each test gets it
# as ``sandbox``, fresh.


@pytest.fixture
def sandbox(server: SandboxProcess) -> Iterator[SandboxProcess]:
    """The module's ``server`` with its counts reset; its settings restored after the test."""
    server.reset()
    yield server
    server.configure(**SANDBOX_DEFAULTS)


# The web app's catalogue (tests/web_data.py): crawled once per session, read by its tests only.


@pytest.fixture(scope="session")
def crawled_twice(mongod: MongodProcess, tmp_path_factory: pytest.TempPathFactory) -> Crawled:
    return crawl_twice(tmp_path_factory.mktemp("web"), mongod, f"t_web_{secrets.token_hex(4)}")
