"""Running real ``scrapy crawl`` processes against the sandbox, and reading what they left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Long and unguessable, so finding it anywhere is a real leak, not a coincidence.
TOKEN = "tk-" + os.urandom(12).hex()


@dataclass
class CrawlResult:
    returncode: int
    log: str
    stats: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)

    def stat(self, key: str, default: Any = 0) -> Any:
        return self.stats.get(key, default)

    def stats_with(self, prefix: str) -> dict[str, Any]:
        return {k[len(prefix):]: v for k, v in self.stats.items() if k.startswith(prefix)}


def crawl(
    tmp_path: Path,
    *arguments: str,
    base_url: str,
    mongo_uri: str = "",
    database: str = "tmapi_test",
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    spider: str = "category_items",
    feed: bool = False,
    store: bool = True,
    timeout: float = 240,
) -> CrawlResult:
    """Run one crawl to its end in a subprocess; ``arguments`` are ``name=value`` pairs.

    ``store=False`` leaves MongoDB out (items only through the feed, with ``feed=True``).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    stats_path = tmp_path / "stats.json"
    stats_path.unlink(missing_ok=True)
    items_path = tmp_path / "items.jsonl"
    command = [sys.executable, "-m", "scrapy", "crawl", spider]
    for argument in arguments:
        command += ["-a", argument]
    all_settings = {
        "STATS_FILE": str(stats_path),
        "LOG_LEVEL": "DEBUG",
        "TMAPI_RETRY_BASE_DELAY": "0.01",
        "TMAPI_RETRY_MAX_DELAY": "0.05",
        "MONGO_FLUSH_INTERVAL": "0.2",
        "MONGO_EMBEDDED_DIR": str(tmp_path / "embedded-mongodb"),
        "MONGO_SPILL_DIR": str(tmp_path / "unsaved"),
        **(settings or {}),
    }
    if not store:
        all_settings.setdefault("ITEM_PIPELINES", "{}")
    if feed:
        # One record per sighting, with its query context: what the tests check against.
        all_settings.setdefault("TMAPI_FEED_RECORDS", "sightings")
    for name, value in all_settings.items():
        command += ["-s", f"{name}={value}"]
    if feed:
        command += ["-O", str(items_path)]
    environment = {
        **os.environ,
        "TMAPI_TOKEN": TOKEN,
        "TMAPI_BASE_URL": base_url,
        "MONGO_URI": mongo_uri,
        "MONGO_DATABASE": database,
        **(env or {}),
    }
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    result = CrawlResult(done.returncode, done.stderr + done.stdout)
    if stats_path.exists():
        result.stats = json.loads(stats_path.read_text())
    if feed and items_path.exists():
        result.items = [json.loads(line) for line in items_path.read_text().splitlines()]
    return result


def records(stats: dict[str, Any], billed: bool | None = True) -> list[tuple[Any, ...]]:
    """The sandbox's request records as (cat_id, language, sort, page) tuples.

    ``billed=True``: only successful, billed answers; None: every request that named a page.
    """
    return [
        (r["cat_id"], r["language"], r["sort"], r["page"])
        for r in stats["records"]
        if "cat_id" in r and (billed is None or r["ok"] is billed)
    ]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` until it is truthy (the event it describes happened)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)
    return result
