"""One concurrency limit for every worker of a cluster: a lease-based semaphore in Redis.

The account's limit is per token, not per process, so the workers share one count. A permit is
a member of a sorted set scored by its expiry: a worker that dies holding permits loses them
when the reaper sees its heartbeat expire, or at the latest after ``TMAPI_LEASE_SECONDS`` (longer
than any request can take). Every change is one Lua script, so permits are never over-granted.

Waiting is cheap and prompt: each process has one pump that asks Redis for as many permits as it
has waiters, and sleeps until a permit is released anywhere (pub/sub) or a short poll interval
passes. The limit itself adapts like ``throttle.AdaptiveLimiter`` (one slot less per 503, one
more after ``TMAPI_THROTTLE_RECOVERY`` successes), but cluster-wide.

``close(reason)`` with a finish reason (the quota is gone) sets a stop flag and tells every
worker, which then closes with the same reason. The flag applies to workers started before it:
starting workers again is how a user resumes after topping up the balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import redis
from scrapy import signals

from tmapi_crawler.closing import close_spider
from tmapi_crawler.distributed.cluster import Cluster
from tmapi_crawler.transport.limiter import LimiterClosed

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_LUA_LIMIT = """
local maximum = tonumber(ARGV[1])
local limit = tonumber(redis.call('GET', KEYS[1]) or maximum)
if limit > maximum then limit = maximum end
"""

# KEYS: limit, permits, stop. ARGV: maximum, wanted, lease ms, permit id prefix, started ms.
# Returns {-1, reason} when stopped, else {limit, permits in use, {granted ids}}.
_ACQUIRE = _LUA_NOW + _LUA_LIMIT + """
local stop_at = redis.call('HGET', KEYS[3], 'at')
if stop_at and tonumber(stop_at) >= tonumber(ARGV[5]) then
  return {-1, redis.call('HGET', KEYS[3], 'reason')}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local used = redis.call('ZCARD', KEYS[2])
local ids = {}
for i = 1, math.min(tonumber(ARGV[2]), limit - used) do
  ids[i] = ARGV[4] .. ':' .. i
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ids[i])
end
return {limit, used + #ids, ids}
"""

# KEYS: permits. ARGV: channel, permit ids.
_RELEASE = """
local n = 0
for i = 2, #ARGV do n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('PUBLISH', ARGV[1], n) end
return n
"""

# KEYS: limit, successes. ARGV: maximum. Returns {lowered (0/1), limit}.
_THROTTLED = _LUA_LIMIT + """
redis.call('DEL', KEYS[2])
if limit > 1 then
  redis.call('SET', KEYS[1], limit - 1)
  return {1, limit - 1}
end
return {0, limit}
"""

# KEYS: limit, successes. ARGV: maximum, recovery, channel. Returns {raised (0/1), limit}.
_SUCCEEDED = _LUA_LIMIT + """
if limit >= maximum then return {0, limit} end
if redis.call('INCR', KEYS[2]) < tonumber(ARGV[2]) then return {0, limit} end
redis.call('DEL', KEYS[2])
limit = limit + 1
if limit >= maximum then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], limit) end
redis.call('PUBLISH', ARGV[3], 'limit')
return {1, limit}
"""

# KEYS: stop. ARGV: reason, channel.
_STOP = _LUA_NOW + """
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'at', now)
redis.call('PUBLISH', ARGV[2], cjson.encode({reason = ARGV[1], at = now}))
return now
"""

_NOW = _LUA_NOW + "return now"


class RedisLimiter:
    """``throttle.AdaptiveLimiter``'s interface, with the count and the limit kept in Redis."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisLimiter:
        settings = crawler.settings
        lease = settings.getfloat("TMAPI_LEASE_SECONDS")
        if lease <= 0:
            raise ValueError("TMAPI_LEASE_SECONDS must be positive")
        if lease < settings.getfloat("DOWNLOAD_TIMEOUT"):
            logger.warning("TMAPI_LEASE_SECONDS (%s) is shorter than DOWNLOAD_TIMEOUT: a slow "
                           "request may outlive its permit and the cluster exceed its limit", lease)
        limiter = cls(
            crawler,
            Cluster.of(crawler),
            maximum=settings.getint("TMAPI_CONCURRENCY"),
            recovery=settings.getint("TMAPI_THROTTLE_RECOVERY"),
            lease_seconds=lease,
            poll_interval=settings.getfloat("TMAPI_LIMITER_POLL_INTERVAL"),
        )
        crawler.signals.connect(limiter.start, signal=signals.spider_opened)
        return limiter

    def __init__(self, crawler: Crawler, cluster: Cluster, *, maximum: int, recovery: int,
                 lease_seconds: float, poll_interval: float) -> None:
        if maximum < 1:
            raise ValueError("TMAPI_CONCURRENCY must be at least 1")
        if poll_interval <= 0:
            raise ValueError("TMAPI_LIMITER_POLL_INTERVAL must be positive")
        self.crawler = crawler
        self.cluster = cluster
        self.keys = cluster.limiter_keys
        self.maximum = maximum
        self.limit = maximum
        self.recovery = recovery
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_interval = poll_interval
        #: The most permits the cluster had in use, as seen by this worker's acquisitions.
        self.peak = 0
        self._held: deque[str] = deque()
        self._waiters: deque[asyncio.Future[str]] = deque()
        self._wakeup = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._started_ms = 0
        self._batches = 0
        self._closed = False
        client = cluster.aio
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._throttled = client.register_script(_THROTTLED)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._stop = client.register_script(_STOP)
        self._now = client.register_script(_NOW)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """Permits this worker holds (the cluster's count is in Redis: ``scrapy status``)."""
        return len(self._held)

    async def start(self) -> None:
        """Note when this worker started (stop flags older than that are not for it) and listen.

        Called when the spider opens; if Redis does not answer then, acquiring retries it.
        """
        try:
            await self._open()
        except redis.RedisError as exc:
            logger.warning("Redis limiter not ready (%s); retrying when a permit is needed", exc)

    async def _open(self) -> None:
        opening = self._opening
        if opening is None or (opening.done() and opening.exception() is not None):
            opening = self._opening = asyncio.ensure_future(self._start())
        await asyncio.shield(opening)

    async def _start(self) -> None:
        self._started_ms = int(await self._now())
        pubsub = self.cluster.aio.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.released_channel, self.keys.stopped_channel)
        self._listener = asyncio.ensure_future(self._listen(pubsub))

    async def acquire(self) -> None:
        while True:
            if self._closed:
                raise LimiterClosed
            try:
                await self._open()
                break
            except redis.RedisError as exc:
                logger.warning("Redis limiter: %s; retrying", exc)
                await asyncio.sleep(1.0)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        try:
            permit = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._held.append(waiter.result())
                await self.release()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        self._held.append(permit)

    async def release(self) -> None:
        """Give back the oldest permit this worker holds (they are interchangeable).

        If Redis does not answer, the permit returns when its lease expires: a page must not
        fail for it.
        """
        if not self._held:
            return
        permit = self._held.popleft()
        try:
            await self._release(keys=[self.keys.permits],
                                args=[self.keys.released_channel, permit])
        except redis.RedisError as exc:
            logger.warning("Redis limiter: %s; the permit returns when its lease expires", exc)
        self._kick()

    async def throttled(self) -> bool:
        try:
            lowered, self.limit = await self._throttled(
                keys=[self.keys.limit, self.keys.successes], args=[self.maximum]
            )
        except redis.RedisError as exc:
            logger.warning("Redis limiter: %s; limit not lowered", exc)
            return False
        return bool(lowered)

    async def succeeded(self) -> bool:
        if self.limit >= self.maximum:  # the usual case costs no round trip
            return False
        try:
            raised, self.limit = await self._succeeded(
                keys=[self.keys.limit, self.keys.successes],
                args=[self.maximum, self.recovery, self.keys.released_channel],
            )
        except redis.RedisError as exc:
            logger.warning("Redis limiter: %s; success not counted", exc)
            return False
        return bool(raised)

    async def close(self, reason: str | None = None) -> None:
        """Refuse every waiting and future acquire; with a reason, stop the whole cluster."""
        if reason is not None and not self._closed:
            try:
                await self._stop(keys=[self.keys.stop],
                                 args=[reason, self.keys.stopped_channel])
            except redis.RedisError as exc:
                logger.error("Could not tell the other workers to stop (%s): %s", reason, exc)
        self._shut()
        if reason is None:
            await self._shutdown()

    def _shut(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(LimiterClosed())

    async def _shutdown(self) -> None:
        """Local shutdown: stop listening and give back any permit still held."""
        for task in (self._pump_task, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                    await task
        if self._held:
            permits, self._held = list(self._held), deque()
            with contextlib.suppress(redis.RedisError):
                await self._release(keys=[self.keys.permits],
                                    args=[self.keys.released_channel, *permits])

    def _kick(self) -> None:
        """Wake the pump, or start it when there are waiters and none runs."""
        self._wakeup.set()
        if self._waiters and (self._pump_task is None or self._pump_task.done()):
            self._pump_task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        """Ask for as many permits as there are waiters until none is left waiting."""
        while not self._closed:
            waiting = [w for w in self._waiters if not w.done()]
            if not waiting:
                return
            self._wakeup.clear()
            try:
                granted = await self._ask(len(waiting))
            except redis.RedisError as exc:
                logger.warning("Redis limiter: %s; retrying", exc)
                granted = []
            for permit in granted:
                waiter = next((w for w in self._waiters if not w.done()), None)
                if waiter is None:  # cancelled meanwhile: hand the permit straight back
                    self._held.append(permit)
                    await self.release()
                else:
                    self._waiters.remove(waiter)
                    waiter.set_result(permit)
            if self._closed or not any(not w.done() for w in self._waiters):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _ask(self, wanted: int) -> list[str]:
        self._batches += 1
        result = await self._acquire(
            keys=[self.keys.limit, self.keys.permits, self.keys.stop],
            args=[self.maximum, wanted, self.lease_ms,
                  f"{self.cluster.worker_id}:{self._batches}", self._started_ms],
        )
        if result[0] == -1:
            self._stopped_by_cluster(result[1].decode())
            return []
        self.limit, in_use = int(result[0]), int(result[1])
        self.peak = max(self.peak, in_use)
        return [permit.decode() for permit in result[2]]

    async def _listen(self, pubsub: Any) -> None:
        """Wake the pump on every release anywhere; stop when another worker stopped the crawl."""
        stopped = self.keys.stopped_channel.encode()
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except redis.RedisError as exc:
                    logger.warning("Redis limiter notifications: %s; polling meanwhile", exc)
                    await asyncio.sleep(self.poll_interval)
                    continue
                if message is None:
                    continue
                if message["channel"] == stopped:
                    stop = json.loads(message["data"])
                    if int(stop["at"]) >= self._started_ms:
                        self._stopped_by_cluster(stop["reason"])
                else:
                    self._wakeup.set()
        finally:
            with contextlib.suppress(redis.RedisError):
                await pubsub.aclose()

    def _stopped_by_cluster(self, reason: str) -> None:
        """Another worker stopped the crawl: close this one with the same finish reason."""
        if self._closed:
            return
        logger.error("Another worker stopped the crawl (%s); closing", reason)
        self._shut()
        if self.crawler.crawling:
            close_spider(self.crawler, reason)
