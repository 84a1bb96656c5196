"""One process's handle on the shared crawl: settings, keys, worker identity, connections.

The scheduler, the limiter and the ``seed``/``status`` commands all go through it, so a worker
opens two connection pools (one blocking, for the scheduler whose interface is synchronous, and
one asyncio, for the limiter's waiting and pub/sub) instead of one per scrapy-redis component.
"""

from __future__ import annotations

import json
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

from tmapi_crawler import api
from tmapi_crawler.distributed.keys import CrawlKeys, LimiterKeys, redact_url
from tmapi_crawler.distributed.queue import LUA_GIVE_BACK, ReliablePriorityQueue
from tmapi_crawler.frontier.paging import page_url
from tmapi_crawler.plan import Query
from tmapi_crawler.storage.runs import new_crawl_id

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: Lua: record a worker's heartbeat (TTL > 0) or its exit (TTL 0), stamped with Redis's clock so
#: ages are right whatever the workers' clocks say.
_LUA_REGISTER = """
local function register(alive, workers, worker, ttl, info)
  local t = redis.call('TIME')
  local fields = cjson.decode(info)
  fields.last_seen = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if tonumber(ttl) > 0 then
    redis.call('SET', alive, '1', 'PX', ttl)
  else
    redis.call('DEL', alive)
  end
  redis.call('HSET', workers, worker, cjson.encode(fields))
end
"""

# KEYS: alive, workers. ARGV: worker, ttl ms, info.
_HEARTBEAT = _LUA_REGISTER + "register(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])"

# Join the cluster crawl, or start a new one when ``renew`` and the previous one is over: nothing
# queued, nothing leased, no worker alive. Joining and registering the worker are one step, so
# two workers starting together cannot both start a crawl.
# KEYS: crawl, queue, workers, dupefilter, done, failed, deliveries.
# ARGV: base, renew (0/1), new id, worker ('' for none), ttl ms, info.
_BEGIN = _LUA_REGISTER + """
local id = redis.call('HGET', KEYS[1], 'id')
local fresh = false
if not id then
  fresh = true
elseif ARGV[2] == '1' and redis.call('ZCARD', KEYS[2]) == 0 then
  fresh = true
  for _, w in ipairs(redis.call('HKEYS', KEYS[3])) do
    if redis.call('EXISTS', ARGV[1] .. ':alive:' .. w, ARGV[1] .. ':leases:' .. w) > 0 then
      fresh = false
      break
    end
  end
end
if fresh then
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'id', ARGV[3], 'started_at', t[1])
  id = ARGV[3]
end
if ARGV[4] ~= '' then
  register(ARGV[1] .. ':alive:' .. ARGV[4], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
end
return {id, fresh and 1 or 0}
"""

# KEYS: queue, workers. ARGV: base.
# Returns {queued, leased by live workers, live workers, dead workers still holding leases}.
_CENSUS = """
local leased, live, dead = 0, 0, {}
for _, w in ipairs(redis.call('HKEYS', KEYS[2])) do
  local n = redis.call('HLEN', ARGV[1] .. ':leases:' .. w)
  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. w) == 1 then
    leased = leased + n
    live = live + 1
  elseif n > 0 then
    dead[#dead + 1] = w
  end
end
return {redis.call('ZCARD', KEYS[1]), leased, live, dead}
"""

# Give a dead worker's leases back (or fail the poison ones) and free its concurrency permits.
# KEYS: alive, leases, deliveries, failed, queue, permits. ARGV: max deliveries, worker, channel.
_REAP = LUA_GIVE_BACK + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
local requeued, failed = 0, 0
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  local r = give_back(KEYS[2], KEYS[3], KEYS[4], KEYS[5], id, true, tonumber(ARGV[1]), ARGV[2],
                      'worker_lost')
  if r == 1 then requeued = requeued + 1 elseif r == 0 then failed = failed + 1 end
end
local prefix = ARGV[2] .. ':'
local freed = 0
for _, p in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  if string.sub(p, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[6], p)
    freed = freed + 1
  end
end
if freed > 0 then redis.call('PUBLISH', ARGV[3], 'reaped') end
return {requeued, failed}
"""

_CLUSTERS: WeakKeyDictionary[Crawler, Cluster] = WeakKeyDictionary()


class ClusterSettingsError(ValueError):
    """A distributed setting that cannot work; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Census:
    queued: int
    leased: int  # by live workers
    live_workers: int
    dead_with_leases: list[str]

    @property
    def busy(self) -> bool:
        return bool(self.queued or self.leased or self.dead_with_leases)


def new_worker_id() -> str:
    """Readable (host, pid) and unique; no dots, so it can name a MongoDB field."""
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
        prefix = settings.get("TMAPI_REDIS_PREFIX") or "tmapi"
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
        self._redis: redis.Redis | None = None
        self._aio: redis.asyncio.Redis | None = None
        self._scripts: dict[str, Any] = {}

    @classmethod
    def of(cls, crawler: Crawler) -> Cluster:
        """The crawler's cluster handle, shared by its scheduler and limiter."""
        cluster = _CLUSTERS.get(crawler)
        if cluster is None:
            cluster = _CLUSTERS[crawler] = cls(crawler.settings, crawler.spidercls.name)
            crawler.signals.connect(cluster.aclose, signal=signals.engine_stopped)
        return cluster

    @property
    def redis(self) -> redis.Redis:
        """The blocking client: the scheduler interface Scrapy calls is synchronous."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.url, socket_timeout=30, socket_connect_timeout=10, retry_on_timeout=True
            )
        return self._redis

    @property
    def aio(self) -> redis.asyncio.Redis:
        """The asyncio client, for the limiter: waiting for a permit must not block the loop."""
        if self._aio is None:
            self._aio = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=30, socket_connect_timeout=10, retry_on_timeout=True
            )
        return self._aio

    def _script(self, name: str, source: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(source)
        return self._scripts[name]

    async def aclose(self) -> None:
        if self._aio is not None:
            await self._aio.aclose()
            self._aio = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def close(self) -> None:
        """For commands, which never open the asyncio client."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    # Queue and dupefilter, built the same way for workers and for ``scrapy seed``.

    def dupefilter(self) -> RFPDupeFilter:
        cls = load_object(self.settings.get("DUPEFILTER_CLASS"))
        if not (isinstance(cls, type) and issubclass(cls, RFPDupeFilter)):
            raise ClusterSettingsError("DUPEFILTER_CLASS must be scrapy-redis's RFPDupeFilter "
                                       "(or a subclass) for a shared queue")
        return cls(self.redis, key=self.keys.dupefilter,
                   debug=self.settings.getbool("DUPEFILTER_DEBUG"))

    def open_queue(self, spider: Spider, worker: str | None) -> ReliablePriorityQueue:
        cls = load_object(self.settings.get("SCHEDULER_QUEUE_CLASS"))
        if not (isinstance(cls, type) and issubclass(cls, ReliablePriorityQueue)):
            raise ClusterSettingsError(
                "SCHEDULER_QUEUE_CLASS must be tmapi_crawler.distributed.queue."
                "ReliablePriorityQueue (or a subclass): other queues lose popped requests"
            )
        serializer = load_object(self.settings.get("SCHEDULER_SERIALIZER"))
        base_url = self.settings.get("TMAPI_BASE_URL") or api.DEFAULT_BASE_URL
        return cls(self.redis, spider, self.keys.queue, serializer, keys=self.keys,
                   api_prefix=page_url(base_url, Query(0), 1).split("?")[0] + "?",
                   worker=worker, max_deliveries=self.max_deliveries)

    # Crawl and workers.

    def worker_info(self, state: str, **extra: Any) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "state": state, **extra}

    def begin_crawl(self, *, renew: bool, worker_info: dict[str, Any] | None) -> tuple[str, bool]:
        """The cluster crawl's id, and whether this call started it.

        ``renew``: start a new crawl if the previous one is over (``scrapy seed``, a seeding
        worker); otherwise join it whatever its state (a pure worker). With ``worker_info``,
        this worker is registered alive in the same step.
        """
        keys = self.keys
        crawl_id, fresh = self._script("begin", _BEGIN)(
            keys=[keys.crawl, keys.queue, keys.workers, keys.dupefilter, keys.done, keys.failed,
                  keys.deliveries],
            args=[keys.base, int(renew), new_crawl_id(),
                  self.worker_id if worker_info else "", self._ttl_ms(),
                  json.dumps(worker_info or {})],
        )
        return crawl_id.decode(), bool(fresh)

    def _ttl_ms(self) -> int:
        return int(self.heartbeat_ttl * 1000)

    def heartbeat(self, info: dict[str, Any], *, alive: bool = True) -> None:
        """Say this worker is alive (or, with ``alive=False``, that it left cleanly)."""
        self._script("heartbeat", _HEARTBEAT)(
            keys=[self.keys.alive(self.worker_id), self.keys.workers],
            args=[self.worker_id, self._ttl_ms() if alive else 0, json.dumps(info)],
        )

    def census(self) -> Census:
        queued, leased, live, dead = self._script("census", _CENSUS)(
            keys=[self.keys.queue, self.keys.workers], args=[self.keys.base]
        )
        return Census(int(queued), int(leased), int(live), [w.decode() for w in dead])

    def reap(self, worker: str) -> tuple[int, int]:
        """Return a dead worker's leases and permits; (requeued, failed as poison)."""
        keys = self.keys
        requeued, failed = self._script("reap", _REAP)(
            keys=[keys.alive(worker), keys.leases(worker), keys.deliveries, keys.failed,
                  keys.queue, self.limiter_keys.permits],
            args=[self.max_deliveries, worker, self.limiter_keys.released_channel],
        )
        return int(requeued), int(failed)

    def reap_dead(self, census: Census | None = None) -> tuple[int, int]:
        """Reap every worker whose heartbeat expired while it held leases."""
        requeued = failed = 0
        for worker in (census or self.census()).dead_with_leases:
            r, f = self.reap(worker)
            requeued, failed = requeued + r, failed + f
        return requeued, failed

    # What ``scrapy status`` shows.

    def status(self) -> dict[str, Any]:
        """A read-only snapshot of the crawl, the workers and the limiter."""
        keys, lkeys, r = self.keys, self.limiter_keys, self.redis
        seconds, micros = r.time()
        now = seconds + micros / 1e6
        with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.crawl).zcard(keys.queue).scard(keys.dupefilter).get(keys.done)
            pipe.hlen(keys.failed).hgetall(keys.workers).hgetall(lkeys.stop).get(lkeys.limit)
            pipe.zcount(lkeys.permits, now * 1000, "+inf")
            crawl, queued, known, done, failed, workers, stop, limit, permits = pipe.execute()
        names = sorted(w.decode() for w in workers)
        with r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(keys.alive(name)).hlen(keys.leases(name))
            found = pipe.execute()
        rows, in_flight, lost = [], 0, 0
        for index, name in enumerate(names):
            alive, leased = bool(found[2 * index]), int(found[2 * index + 1])
            info = json.loads(workers[name.encode()])
            if alive:
                in_flight += leased
            else:
                lost += leased
            rows.append({
                "id": name, "host": info.get("host"), "pid": info.get("pid"), "alive": alive,
                "state": info.get("state") if alive or info.get("state") != "running" else "lost",
                "finish_reason": info.get("finish_reason"),
                "last_seen_age": round(now - float(info.get("last_seen", now)), 1),
                "leased": leased,
            })
        done_count, failed_count, known_count = int(done or 0), int(failed), int(known)
        stop_info = None
        if stop:
            at = int(stop[b"at"]) / 1000
            stop_info = {"reason": stop[b"reason"].decode(), "age": round(now - at, 1)}
        live = sum(1 for row in rows if row["alive"])
        return {
            "redis": redact_url(self.url),
            "key": keys.base,
            "crawl_id": crawl[b"id"].decode() if crawl else None,
            "state": _state(crawl=crawl, live=live, left=queued + in_flight + lost,
                            known=known_count, stop=stop_info, now=now),
            "queued": int(queued),
            "in_flight": in_flight,
            "in_flight_lost": lost,
            "done": done_count,
            "failed": failed_count,
            "known": known_count,
            "progress": (round((done_count + failed_count) / known_count, 4)
                         if known_count else None),
            "workers": rows,
            "stop": stop_info,
            "limiter": {"limit": int(limit) if limit else None, "permits_in_use": int(permits)},
        }


def _state(*, crawl: dict[bytes, bytes], live: int, left: int, known: int,
           stop: dict[str, Any] | None, now: float) -> str:
    if not crawl:
        return "none"
    if live:
        return "running"
    if not left:
        return "finished" if known else "empty"
    started = float(crawl.get(b"started_at", 0))
    if stop is not None and now - stop["age"] >= started:
        return f"stopped ({stop['reason']})"
    return "waiting for workers"
