"""One process's handle on the shared crawl: settings, keys, worker identity, the Redis client.

The scheduler, the limiter, the ``seed``/``status`` commands and the progress lines all go
through it: one asyncio connection pool per process (the event loop never waits on Redis),
and every step on shared state one Lua script (``scripts.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import redis
import redis.asyncio
from scrapy import signals
from scrapy.utils.misc import load_object
from scrapy_redis.dupefilter import RFPDupeFilter

from tmapi_crawler.crawl import new_crawl_id
from tmapi_crawler.distributed.keys import CrawlKeys, LimiterKeys, redact_url
from tmapi_crawler.distributed.queue import CrawlGone, SharedQueue
from tmapi_crawler.distributed.scripts import Scripts

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

_CLUSTERS: WeakKeyDictionary[Crawler, Cluster] = WeakKeyDictionary()
#: Retry delays while Redis does not answer.
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)


class ClusterSettingsError(ValueError):
    """A distributed setting that cannot work; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Census:
    """The cluster as one heartbeat saw it."""

    queued: int
    leased: int  # by live workers
    live_workers: int
    complete: bool
    dead_with_leases: list[str]

    @property
    def busy(self) -> bool:
        return bool(self.queued or self.leased or self.dead_with_leases)


@dataclass(frozen=True, slots=True)
class Completion:
    """How the cluster crawl ended, as ``complete.lua`` decided: ``finaliser`` is true for the
    one worker that completed it; ``missing`` entries were queued but never done nor failed."""

    lost: bool
    finaliser: bool
    missing: int


class Outage:
    """Logs a Redis outage once when it starts and once when it ends, and paces the retries."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    async def failed(self, exc: Exception) -> None:
        if not self.failures:
            logger.warning("Redis: %s failed (%s); retrying until it answers", self.what, exc)
        self.failures += 1
        await asyncio.sleep(BACKOFF[min(self.failures, len(BACKOFF)) - 1])

    def succeeded(self) -> None:
        if self.failures:
            logger.info("Redis answers again: %s resumed", self.what)
        self.failures = 0


def new_worker_id() -> str:
    """Readable (host, pid) and unique; no dots or colons, so it can name a MongoDB field and
    prefix permit ids."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def _positive(settings: BaseSettings, name: str) -> float:
    value = settings.getfloat(name)
    if value <= 0:
        raise ClusterSettingsError(f"{name} must be a positive number of seconds, not {value}")
    return value


class Cluster:
    """Settings and state shared by every distributed component of one process."""

    def __init__(self, settings: BaseSettings, spider_name: str) -> None:
        self.url: str = settings.get("REDIS_URL") or ""
        if not self.url:
            raise ClusterSettingsError("REDIS_URL: no Redis server configured")
        prefix = settings.get("TMAPI_REDIS_PREFIX")
        self.settings = settings
        self.keys = CrawlKeys(f"{prefix}:{spider_name}")
        self.limiter_keys = LimiterKeys(f"{prefix}:limiter")
        self.worker_id = new_worker_id()
        self.heartbeat_interval = _positive(settings, "TMAPI_HEARTBEAT_INTERVAL")
        self.heartbeat_ttl = _positive(settings, "TMAPI_HEARTBEAT_TTL")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ClusterSettingsError(
                "TMAPI_HEARTBEAT_TTL must be longer than TMAPI_HEARTBEAT_INTERVAL, or live "
                "workers would be taken for dead"
            )
        self.max_deliveries = settings.getint("TMAPI_MAX_DELIVERIES")
        if self.max_deliveries < 1:
            raise ClusterSettingsError("TMAPI_MAX_DELIVERIES must be at least 1")
        cls = load_object(settings.get("DUPEFILTER_CLASS"))
        if not (isinstance(cls, type) and issubclass(cls, RFPDupeFilter)):
            raise ClusterSettingsError("DUPEFILTER_CLASS must be scrapy-redis's RFPDupeFilter "
                                       "(or a subclass) for a shared queue")
        # Used for its fingerprints and its log of duplicates: the set itself is written by
        # the queue's scripts, atomically with the queue, so it needs no client of its own.
        self.dupefilter: RFPDupeFilter = cls(None, key=self.keys.dupefilter,
                                             debug=settings.getbool("DUPEFILTER_DEBUG"))
        self._client: redis.asyncio.Redis | None = None
        self._scripts: Scripts | None = None
        #: Set when a component decided this worker stops (the crawl's state was lost): the
        #: limiter then grants no more permits.
        self.stopping: str | None = None

    @classmethod
    def of(cls, crawler: Crawler) -> Cluster:
        """The crawler's cluster handle, shared by its scheduler, limiter and progress."""
        cluster = _CLUSTERS.get(crawler)
        if cluster is None:
            cluster = _CLUSTERS[crawler] = cls(crawler.settings, crawler.spidercls.name)
            crawler.signals.connect(cluster.aclose, signal=signals.engine_stopped)
        return cluster

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=30, socket_connect_timeout=10
            )
        return self._client

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.client)
        return self._scripts

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = self._scripts = None

    def queue(self, crawl_id: str, worker: str | None) -> SharedQueue:
        return SharedQueue(self.client, self.keys, crawl_id, worker,
                           max_deliveries=self.max_deliveries)

    # The crawl and its workers.

    def worker_info(self, state: str, **extra: Any) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "state": state, **extra}

    async def begin_crawl(self, *, renew: bool, worker_info: dict[str, Any] | None,
                          crawl_id: str | None = None, seeding: float = 0
                          ) -> tuple[str, bool]:
        """The cluster crawl's id, and whether this call started it (``begin.lua``).

        A crawl started here takes ``crawl_id`` when given (``scrapy seed`` resuming an
        interrupted crawl), else a new id. With ``worker_info``, this worker is registered
        alive in the same step. ``seeding``: no worker completes the crawl for that many
        seconds (``seeding``). Raises ``CrawlGone`` when a worker (not ``renew``) finds a
        crawl whose state Redis lost.
        """
        keys, lkeys = self.keys, self.limiter_keys
        begun, fresh, state = await self.scripts["begin"](
            keys=[keys.crawl, keys.queue, keys.workers, keys.dupefilter, keys.done, keys.failed,
                  keys.deliveries, keys.entries, keys.progress, lkeys.limit, lkeys.successes,
                  keys.sightings, keys.frontier, keys.frontier_sets],
            args=[keys.base, int(renew), crawl_id or new_crawl_id(),
                  self.worker_id if worker_info else "", self._ttl_ms(),
                  json.dumps(worker_info or {}), int(seeding * 1000)],
        )
        if state == b"lost":
            raise CrawlGone(begun.decode())
        return begun.decode(), bool(fresh)

    async def seeding(self, crawl_id: str, seconds: float) -> None:
        """``scrapy seed`` is still at work on the crawl for ``seconds`` more (0: it is done):
        meanwhile an empty queue is not the crawl's end (``seeding.lua``)."""
        await self.scripts["seeding"](keys=[self.keys.crawl],
                                      args=[crawl_id, int(seconds * 1000)])

    async def forget_page_memos(self, crawl_id: str) -> int:
        """Drop what the frontier remembers of pages of ``crawl_id`` (``state.py``): a crawl
        resumed under its id after Redis lost part of its state decides them afresh."""
        pattern = re.sub(r"([][*?\\])", r"\\\1", self.keys.frontier_page(crawl_id, "")) + "*"
        stale = [key async for key in self.client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(stale), 1000):
            await self.client.unlink(*stale[start:start + 1000])
        return len(stale)

    def _ttl_ms(self) -> int:
        return int(self.heartbeat_ttl * 1000)

    async def heartbeat(self, crawl_id: str, info: dict[str, Any]) -> Census:
        """Say this worker is alive, and see the cluster; ``CrawlGone`` if the crawl is."""
        result = await self.scripts["heartbeat"](
            keys=[self.keys.crawl, self.keys.queue, self.keys.workers],
            args=[self.keys.base, crawl_id, self.worker_id, self._ttl_ms(), json.dumps(info)],
        )
        if result[0] == b"lost":
            raise CrawlGone(crawl_id)
        _, queued, leased, live, complete, *dead = result
        return Census(int(queued), int(leased), int(live), bool(complete),
                      [w.decode() for w in dead])

    async def exit(self, crawl_id: str, info: dict[str, Any], snapshot: str) -> None:
        """Say this worker left cleanly, with its last progress counters."""
        keys = self.keys
        await self.scripts["exit"](
            keys=[keys.crawl, keys.alive(self.worker_id), keys.workers, keys.progress],
            args=[crawl_id, self.worker_id, json.dumps(info), snapshot],
        )

    async def reap(self, worker: str) -> tuple[int, int]:
        """Return a dead worker's leases and permits; (re-queued, failed as poison)."""
        keys = self.keys
        requeued, failed = await self.scripts["reap"](
            keys=[keys.alive(worker), keys.leases(worker), keys.deliveries, keys.failed,
                  keys.queue, keys.entries, self.limiter_keys.permits],
            args=[self.max_deliveries, worker, self.limiter_keys.released_channel],
        )
        return int(requeued), int(failed)

    async def complete(self, crawl_id: str) -> Completion | None:
        """Complete the crawl if nothing is queued or leased anywhere; None while busy."""
        keys, lkeys = self.keys, self.limiter_keys
        result = await self.scripts["complete"](
            keys=[keys.crawl, keys.queue, keys.workers, keys.dupefilter, keys.done, keys.failed,
                  lkeys.limit, lkeys.successes],
            args=[keys.base, crawl_id, self.worker_id],
        )
        state = result[0]
        if state == b"busy":
            return None
        if state == b"gone":
            raise CrawlGone(crawl_id)
        return Completion(lost=state == b"lost", finaliser=bool(result[1]),
                          missing=int(result[2]))

    async def mark_lost(self, crawl_id: str, reason: str) -> None:
        """Leave a mark that the crawl's state was lost (``mark_lost.lua``)."""
        await self.scripts["mark_lost"](keys=[self.keys.crawl], args=[crawl_id, reason])

    async def persistence(self) -> str | None:
        """Why Redis would lose the crawl on a restart, or None when it keeps an append-only
        file. Managed services may refuse CONFIG: ``INFO persistence`` tells too."""
        client = self.client
        try:
            enabled = (await client.config_get("appendonly")).get("appendonly") == "yes"
        except redis.ResponseError:
            try:
                enabled = bool(int((await client.info("persistence")).get("aof_enabled", 0)))
            except redis.ResponseError as exc:
                return f"its persistence could not be checked ({exc})"
        return None if enabled else "it keeps no append-only file (appendonly no)"

    async def warn_without_persistence(self) -> None:
        problem = await self.persistence()
        if problem is not None:
            logger.warning(
                "Redis at %s: %s. If it restarts, the crawl's queue and leases are lost and "
                "the workers stop with redis_state_lost: run it with --appendonly yes",
                redact_url(self.url), problem,
            )
