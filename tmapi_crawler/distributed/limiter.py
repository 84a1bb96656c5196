"""One concurrency limit for every worker of a cluster: a lease-based semaphore in Redis.

The account's limit is per token, not per process, so the workers share one count: a permit is
a member of a sorted set scored by its expiry (``lua/limiter_*.lua``), and no script ever
grants more than the limit. :class:`RedisLimiter` implements ``transport.limiter.Limiter``.

What keeps it at the account's full throughput (BENCHMARKS.md, B5):

* **Permits change hands locally.** A request that ends gives its permit straight to a request
  of the same worker waiting for one, without a Redis round trip — as long as no other worker
  waits, or this one holds no more than its share (the limit split between the workers
  waiting). Otherwise the permit goes back to Redis, where the workers waiting get it.
* **Nothing waits on Redis that need not.** Releases to Redis are written by a task; one that
  fails (Redis restarting) is retried until Redis answers, so permits come back within
  seconds, not after a lease. Waiting workers are woken by a notification on every release.

And what keeps it correct when Redis fails:

* every call to acquire renews the permits the worker holds, and a task renews them every
  ``TMAPI_HEARTBEAT_INTERVAL`` otherwise: a dead worker's permits expire after
  ``TMAPI_LEASE_SECONDS``, or as soon as the others see its heartbeat expire;
* when the limiter's state is new (the first worker on this Redis, or Redis lost it), no permit
  is granted for two heartbeat intervals, while the live workers put back the permits of the
  requests they have in flight: a restarted Redis never lets the cluster exceed its limit.
  Only then are permits put back: a renewal that reaches Redis after the permit's release
  (they travel on different connections) must not bring it back to life, or it would leak.

The limit itself adapts like ``AdaptiveLimiter`` (one slot less per 503, one more after
``TMAPI_THROTTLE_RECOVERY`` successes), but cluster-wide. ``close(reason)`` with a finish
reason (the quota is gone) sets a stop flag and tells every worker, which then closes with the
same reason; the flag applies to workers started before it, so starting workers again is how a
user resumes after topping up the balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import redis
from scrapy import signals

from tmapi_crawler.aio import wait_set
from tmapi_crawler.closing import close_spider
from tmapi_crawler.distributed.cluster import Cluster, ClusterSettingsError
from tmapi_crawler.transport.limiter import LimiterClosed, await_permit, refuse_waiters

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Delays between attempts while Redis does not answer.
_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)


class RedisLimiter:
    """The cluster-wide ``transport.limiter.Limiter``."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisLimiter:
        settings = crawler.settings
        cluster = Cluster.of(crawler)
        lease = settings.getfloat("TMAPI_LEASE_SECONDS")
        if lease <= 2 * cluster.heartbeat_interval:
            raise ClusterSettingsError(
                "TMAPI_LEASE_SECONDS must be longer than two TMAPI_HEARTBEAT_INTERVALs, or "
                "permits in use would expire between their renewals")
        limiter = cls(
            crawler,
            cluster,
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
        #: No permit is granted this long after the limiter's state began (see the docstring).
        self.grace_ms = int(2 * cluster.heartbeat_interval * 1000)
        #: The most permits the cluster had in use, as seen by this worker's acquisitions.
        self.peak = 0
        #: Permits this worker owns: in use by a request, or handed to one that waited.
        self._held: list[str] = []
        self._releasing: list[str] = []
        self._waiters: deque[asyncio.Future[str]] = deque()
        #: As of Redis's last answer: other workers waiting, permits in use in the cluster.
        self._others = 0
        self._used = 0
        #: Whether Redis counts this worker as waiting (its last ask got less than it wanted).
        self._short = False
        self._wakeup = asyncio.Event()
        self._release_wanted = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._opening: asyncio.Future[None] | None = None
        self._started_ms = 0
        self._batches = 0
        self._closed = False

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
        self._started_ms = int(await self.cluster.scripts["limiter_now"]())
        pubsub = self.cluster.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.released_channel, self.keys.stopped_channel)
        self._tasks["listen"] = asyncio.ensure_future(self._listen(pubsub))
        self._tasks["release"] = asyncio.ensure_future(self._release_loop())
        self._tasks["renew"] = asyncio.ensure_future(self._renew_loop())

    async def acquire(self) -> None:
        attempt = 0
        while True:
            if self._closed or self._stopping():
                raise LimiterClosed
            try:
                await self._open()
                break
            except redis.RedisError as exc:
                if not attempt:
                    logger.warning("Redis limiter: %s; retrying", exc)
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick()
        await await_permit(waiter, self._waiters, self.release)

    async def release(self) -> None:
        """Give up one permit: to a request of this worker that waits for one, or to Redis."""
        if not self._held:
            return
        waiter = self._next_waiter()
        if waiter is not None and self._may_keep():
            self._waiters.remove(waiter)
            waiter.set_result(self._held[-1])
            return
        permit = self._held.pop()
        self._used = max(self._used - 1, 0)
        self._releasing.append(permit)
        self._release_wanted.set()

    def _may_keep(self) -> bool:
        """Whether a permit may change hands here rather than go back to Redis."""
        if self._closed or self._stopping() or self._used > self.limit:
            return False
        return not self._others or len(self._held) <= math.ceil(self.limit / (self._others + 1))

    def _next_waiter(self) -> asyncio.Future[str] | None:
        return next((w for w in self._waiters if not w.done()), None)

    def _stopping(self) -> bool:
        """This worker stops (its scheduler said so): no new permit, not even a local one."""
        if self.cluster.stopping is not None and not self._closed:
            self._shut()
        return self._closed

    async def throttled(self) -> bool:
        try:
            lowered, self.limit = await self.cluster.scripts["limiter_throttled"](
                keys=[self.keys.limit, self.keys.successes], args=[self.maximum])
        except redis.RedisError as exc:
            logger.warning("Redis limiter: %s; limit not lowered", exc)
            return False
        return bool(lowered)

    async def succeeded(self) -> bool:
        if self.limit >= self.maximum:  # the usual case costs no round trip
            return False
        try:
            raised, self.limit = await self.cluster.scripts["limiter_succeeded"](
                keys=[self.keys.limit, self.keys.successes],
                args=[self.maximum, self.recovery, self.keys.released_channel])
        except redis.RedisError as exc:
            logger.warning("Redis limiter: %s; success not counted", exc)
            return False
        return bool(raised)

    async def close(self, reason: str | None = None) -> None:
        """Refuse every waiting and future acquire; with a reason, stop the whole cluster."""
        if reason is not None and not self._closed:
            try:
                await self.cluster.scripts["limiter_stop"](
                    keys=[self.keys.stop], args=[reason, self.keys.stopped_channel])
            except redis.RedisError as exc:
                logger.error("Could not tell the other workers to stop (%s): %s", reason, exc)
        self._shut()
        if reason is None:
            await self._shutdown()

    def _shut(self) -> None:
        self._closed = True
        refuse_waiters(self._waiters)

    async def _shutdown(self) -> None:
        """Local shutdown: give back what is still held (once), stop the tasks."""
        self._releasing += self._held
        self._held = []
        release = self._tasks.pop("release", None)
        # The loops also end on ``_closed``: a cancellation can be swallowed inside a redis-py
        # call on the way, and the loop would then wait forever (a test hung so under load).
        self._release_wanted.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if release is not None:
            release.cancel()
            await asyncio.gather(release, return_exceptions=True)
        if self._releasing:
            with contextlib.suppress(redis.RedisError):
                await self._release_now()

    # Tasks.

    def _kick(self) -> None:
        """Wake the pump, or start it when there are waiters and none runs."""
        self._wakeup.set()
        pump = self._tasks.get("pump")
        if self._waiters and (pump is None or pump.done()):
            self._tasks["pump"] = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        """Ask Redis for as many permits as there are waiters until none is left waiting."""
        attempt = 0
        while not self._stopping():
            waiting = sum(1 for w in self._waiters if not w.done())
            if not waiting:
                if not self._short:
                    return
                # Withdraw: no other worker must keep to its share for us. Requests that come
                # to wait meanwhile find this pump still running and start none: look again
                # (they waited forever, nothing in flight, when it returned here).
                with contextlib.suppress(redis.RedisError):
                    await self._ask(0)
                self._short = False  # or, Redis down, the registration expires on its own
                continue
            self._wakeup.clear()
            try:
                granted = await self._ask(waiting)
            except redis.RedisError as exc:
                if not attempt:
                    logger.warning("Redis limiter: %s; retrying", exc)
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
                continue
            attempt = 0
            for permit in granted:
                self._held.append(permit)
                waiter = self._next_waiter()
                if waiter is None:  # cancelled meanwhile: hand the permit straight back
                    await self.release()
                else:
                    self._waiters.remove(waiter)
                    waiter.set_result(permit)
            if self._next_waiter() is None:
                return
            await wait_set(self._wakeup, self.poll_interval)

    async def _ask(self, wanted: int) -> list[str]:
        """One acquisition (``limiter_acquire.lua``), which also re-registers what is held."""
        self._batches += 1
        keys = self.keys
        result = await self.cluster.scripts["limiter_acquire"](
            keys=[keys.epoch, keys.limit, keys.permits, keys.stop, keys.waiting],
            args=[self.maximum, wanted, self.lease_ms, self.cluster.worker_id,
                  f"{self.cluster.worker_id}:{self._batches}", self._started_ms, self.grace_ms,
                  max(1000, int(self.poll_interval * 10_000)), *self._held],
        )
        if result[0] == -1:
            self._stopped_by_cluster(result[1].decode())
            return []
        self.limit, self._used, self._others = int(result[0]), int(result[1]), int(result[2])
        self.peak = max(self.peak, self._used)
        granted = [permit.decode() for permit in result[3:]]
        self._short = wanted > len(granted)
        return granted

    async def _release_loop(self) -> None:
        """Give permits back to Redis; retried until Redis answers."""
        attempt = 0
        while not self._closed:
            self._release_wanted.clear()
            if not self._releasing:
                await self._release_wanted.wait()
                continue
            try:
                await self._release_now()
            except redis.RedisError as exc:
                if not attempt:
                    logger.warning("Redis limiter: %s; %d permits will be given back when it "
                                   "answers", exc, len(self._releasing))
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
                continue
            if attempt:
                logger.info("Redis limiter: permits given back")
            attempt = 0

    async def _release_now(self) -> None:
        permits = list(self._releasing)
        await self.cluster.scripts["limiter_release"](
            keys=[self.keys.permits], args=[self.keys.released_channel, *permits])
        self._releasing = [p for p in self._releasing if p not in permits]
        self._wakeup.set()

    async def _renew_loop(self) -> None:
        """Renew the permits held while no acquisition does it (``_ask`` with nothing wanted)."""
        while not self._closed:
            await asyncio.sleep(self.cluster.heartbeat_interval)
            pump = self._tasks.get("pump")
            if self._held and (pump is None or pump.done()):
                with contextlib.suppress(redis.RedisError):
                    await self._ask(0)

    async def _listen(self, pubsub: Any) -> None:
        """Wake the pump on every release anywhere; stop when another worker stopped the crawl."""
        stopped = self.keys.stopped_channel.encode()
        try:
            while not self._closed:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except redis.RedisError:
                    await asyncio.sleep(self.poll_interval)
                    with contextlib.suppress(redis.RedisError):
                        await pubsub.subscribe(self.keys.released_channel,
                                               self.keys.stopped_channel)
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
