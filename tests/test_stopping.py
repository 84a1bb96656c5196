"""Stopping a real ``scrapy crawl`` with real SIGINTs: once (graceful), and twice (forced).

Every step waits for the line the crawl logs, or for the sandbox to hold requests in flight,
never for a fixed time. The sandbox stalls so that requests hang in flight: a graceful close
would wait for them, which is what a second Ctrl-C cuts short.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.crawling import PROJECT_ROOT, TOKEN, wait_until
from tests.servers import MongodProcess
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.storage.collections import CRAWL_RUNS, PRODUCTS

SIZES = {"501": 200, "502": 200}
GRACEFUL = "Received SIGINT, shutting down gracefully"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size=SIZES) as server:
        yield server


class Crawl:
    """A ``scrapy crawl`` process whose log is read line by line as it comes."""

    def __init__(self, tmp_path: Path, sandbox: SandboxProcess, mongo_uri: str, database: str,
                 settings: dict[str, Any]) -> None:
        self.stats_path = tmp_path / "stats.json"
        command = [sys.executable, "-m", "scrapy", "crawl", "category_items",
                   "-a", "cat_id=501,502", "-a", "language=en,ru,zh,ja,ko,vi",
                   "-a", "page_size=5", "-s", f"STATS_FILE={self.stats_path}",
                   "-s", f"MONGO_SPILL_DIR={tmp_path / 'unsaved'}", "-s", "LOG_LEVEL=DEBUG"]
        for name, value in settings.items():
            command += ["-s", f"{name}={value}"]
        env = {**os.environ, "TMAPI_TOKEN": TOKEN, "TMAPI_BASE_URL": sandbox.url,
               "MONGO_URI": mongo_uri, "MONGO_DATABASE": database}
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> None:
        """Read the log until ``pattern`` has appeared ``count`` times."""
        regex = re.compile(pattern)
        seen = sum(bool(regex.search(line)) for line in self.lines)
        deadline = time.monotonic() + timeout
        while seen < count:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"crawl ended before {pattern!r}:\n{self.log[-3000:]}")
            self.lines.append(line)
            seen += bool(regex.search(line))

    def finish(self, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None):
            self.lines.append(line)
        stats = json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}
        return returncode, stats

    @property
    def log(self) -> str:
        return "".join(self.lines)


def test_a_second_ctrl_c_still_keeps_everything_parsed(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    sandbox.reset()
    sandbox.configure(latency=0.02)
    with MongodProcess(tmp_path / "db") as mongod:
        crawl = Crawl(tmp_path, sandbox, mongod.uri, "forced", {
            "TMAPI_CONCURRENCY": 2, "MONGO_BATCH_SIZE": 100000, "MONGO_FLUSH_INTERVAL": 600,
        })
        try:
            crawl.wait_for(r"Scraped \d+ products", count=10)
            sandbox.configure(stalled=True)  # what is in flight hangs
            wait_until(lambda: sandbox.stats(records=False)["in_flight"] >= 1,
                       "a call is in flight")
            crawl.process.send_signal(signal.SIGINT)
            crawl.wait_for(GRACEFUL)
            crawl.process.send_signal(signal.SIGINT)
            crawl.wait_for("Received SIGINT twice")
            returncode, stats = crawl.finish(timeout=60)
        finally:
            if crawl.process.poll() is None:
                crawl.process.kill()
            sandbox.configure(stalled=False)
        assert returncode == 1, crawl.log[-3000:]
        assert stats, f"no stats file:\n{crawl.log[-3000:]}"
        assert stats["finish_reason"] == "shutdown"
        assert stats[stats_keys.FORCED_STOP] == 1
        parsed = stats[stats_keys.ITEMS]
        assert parsed >= 50
        kept = (stats.get(stats_keys.DB_SIGHTINGS, 0) + stats.get(stats_keys.ITEMS_SPILLED, 0)
                + stats.get(stats_keys.ITEMS_REJECTED, 0))
        assert kept == parsed
        with pymongo.MongoClient(mongod.uri) as client:
            db = client["forced"]
            run = db[CRAWL_RUNS].find_one({"_id": stats[stats_keys.CRAWL_ID]})
            assert (run["status"], run["finish_reason"]) == ("killed", "shutdown")
            assert db[PRODUCTS].count_documents({}) == run["counts"]["products_seen"] > 0


def test_after_one_ctrl_c_no_new_paid_call_starts(
    sandbox: SandboxProcess, tmp_path: Path, mongod: MongodProcess, mongo_db_name: str
) -> None:
    sandbox.reset()
    sandbox.configure(latency=0.5)
    crawl = Crawl(tmp_path, sandbox, mongod.uri, mongo_db_name, {"TMAPI_CONCURRENCY": 2})
    try:
        crawl.wait_for(r"Scraped \d+ products", count=4)
        crawl.process.send_signal(signal.SIGINT)
        crawl.wait_for(GRACEFUL)
        sent_before = sandbox.stats(records=False)["requests"]
        returncode, stats = crawl.finish(timeout=60)
    finally:
        if crawl.process.poll() is None:
            crawl.process.kill()
        sandbox.configure(latency=0.0)
    assert returncode == 1
    assert stats["finish_reason"] == "shutdown"
    assert sandbox.stats(records=False)["requests"] == sent_before == stats[stats_keys.REQUESTS]
    assert stats[stats_keys.REQUESTS_NOT_SENT] >= 1  # requests were waiting for a permit
    assert stats[stats_keys.DB_SIGHTINGS] == stats[stats_keys.ITEMS]
