"""How many API requests may be in flight: the account's limit, adapted to its 503s.

The API caps concurrency per token and answers 503 beyond it. The limiter starts at
``TMAPI_CONCURRENCY``, gives one slot back on every 503, and earns it again after a run of
successes (additive increase, additive decrease: random 503s cost little, a real over-limit
converges within a few answers).

``TMAPI_LIMITER`` names the class, so a cluster can share one limit through Redis
(``distributed.limiter.RedisLimiter``); both implement :class:`Limiter`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

T = TypeVar("T")


class LimiterClosed(Exception):
    """The crawl is stopping; no new request may start."""


class Limiter(Protocol):
    """What the transport needs from a limiter: permits, the 503 feedback, a stop."""

    #: The limit in force now (lowered by 503s, at most ``maximum``).
    limit: int
    #: ``TMAPI_CONCURRENCY``.
    maximum: int
    #: The most permits seen in use at once.
    peak: int

    async def acquire(self) -> None:
        """Wait for a permit; raise ``LimiterClosed`` once the crawl is stopping."""

    async def release(self) -> None:
        """Give back one permit this process holds."""

    async def throttled(self) -> bool:
        """Record a 503; True when it lowered the limit."""

    async def succeeded(self) -> bool:
        """Record a success; True when it raised the limit."""

    async def close(self, reason: str | None = None) -> None:
        """Refuse every waiting and later ``acquire``; a finish reason stops every worker."""

    @property
    def closed(self) -> bool: ...


async def await_permit(waiter: asyncio.Future[T], waiters: deque[asyncio.Future[T]],
                       release: Callable[[], Awaitable[None]]) -> T:
    """Wait until a releaser hands ``waiter`` (queued in ``waiters``) a permit.

    A permit handed over while the wait is being cancelled is given back with ``release``, not
    leaked; the waiter leaves the queue either way.
    """
    try:
        return await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            await release()
        raise
    finally:
        if waiter in waiters:
            waiters.remove(waiter)


def refuse_waiters(waiters: deque[asyncio.Future[Any]]) -> None:
    """Fail every waiting acquire with ``LimiterClosed``: the crawl is stopping."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_exception(LimiterClosed())


class AdaptiveLimiter:
    """One process's limiter."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AdaptiveLimiter:
        settings = crawler.settings
        return cls(settings.getint("TMAPI_CONCURRENCY"), settings.getint("TMAPI_THROTTLE_RECOVERY"))

    def __init__(self, maximum: int, recovery: int) -> None:
        if maximum < 1:
            raise ValueError("TMAPI_CONCURRENCY must be at least 1")
        self.maximum = maximum
        self.limit = maximum
        self.recovery = recovery
        self.in_flight = 0
        self.peak = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def acquire(self) -> None:
        if self._closed:
            raise LimiterClosed
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await await_permit(waiter, self._waiters, self.release)

    async def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    async def throttled(self) -> bool:
        """Record a 503; True when it lowered the limit."""
        self._successes = 0
        if self.limit > 1:
            self.limit -= 1
            return True
        return False

    async def succeeded(self) -> bool:
        """Record a success; True when it raised the limit."""
        if self.limit >= self.maximum:
            return False
        self._successes += 1
        if self._successes < self.recovery:
            return False
        self._successes = 0
        self.limit += 1
        self._wake()
        return True

    async def close(self, reason: str | None = None) -> None:
        """Refuse every waiting and future acquire.

        ``reason`` is a finish reason when the whole crawl must stop (quota gone); a shared
        limiter tells the other workers. None is a local shutdown.
        """
        self._closed = True
        refuse_waiters(self._waiters)

    @property
    def closed(self) -> bool:
        return self._closed

    def _take(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)
