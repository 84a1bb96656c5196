"""The downloader middleware that owns the API's transport rules.

It sits closest to the downloader and downloads API requests itself, so that:

* the token is added to a private copy at the last moment and never enters ``Request.url``,
  the scheduler, fingerprints, logs or the returned response;
* a request waits for a concurrency permit while it already holds a ``CONCURRENT_REQUESTS``
  slot, and keeps both through its retries and backoff — a retry is not re-queued behind
  thousands of other requests, and never exceeds the account's limit;
* every answer code is classified once, by ``tmapi_crawler.api``, whether it came as the HTTP
  status or inside a 200 body.

Every other middleware's ``process_response`` still runs on the response returned here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import JsonResponse, Request, Response
from scrapy.utils.misc import build_from_crawler, load_object

from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.closing import STOPPING_OUTCOMES, close_spider
from tmapi_crawler.frontier.context import META_KEY
from tmapi_crawler.transport import credentials
from tmapi_crawler.transport.answers import Answer, BrokenAnswer, read_answer
from tmapi_crawler.transport.limiter import Limiter, LimiterClosed

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class ApiError(IgnoreRequest):
    """A page the crawler gave up on; ``reason`` says why (an answer code or a failure)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TmapiTransportMiddleware:
    def __init__(self, crawler: Crawler, token: str, limiter: Limiter) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.token = token
        self.limiter = limiter
        self.max_retry_times = settings.getint("TMAPI_RETRY_TIMES")
        self.base_delay = settings.getfloat("TMAPI_RETRY_BASE_DELAY")
        self.max_delay = settings.getfloat("TMAPI_RETRY_MAX_DELAY")
        self._log_filter = credentials.RedactingFilter(token)
        self._stopping: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TmapiTransportMiddleware:
        settings = crawler.settings
        token = credentials.token_from_settings(settings)
        base_url = settings.get("TMAPI_BASE_URL") or api.DEFAULT_BASE_URL
        if base_url.startswith("http://"):
            logger.warning(
                "TMAPI_BASE_URL %s is plain http: the API token travels unencrypted", base_url
            )
        limiter = build_from_crawler(load_object(settings["TMAPI_LIMITER"]), crawler)
        mw = cls(crawler, token, limiter)
        crawler.signals.connect(mw.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(mw.spider_closed, signal=signals.spider_closed)
        logger.info("API token %s", credentials.fingerprint(token))
        return mw

    def spider_opened(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_filter)
        self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)

    async def spider_closed(self) -> None:
        await self.limiter.close()
        self.stats.set_value(stats_keys.THROTTLE_PEAK, self.limiter.peak)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_filter)

    async def process_request(self, request: Request) -> Response | None:
        if META_KEY not in request.meta:
            return None
        attempt = request
        while True:
            answer, response = await self._attempt(attempt)
            outcome = api.outcome_of(answer.code)
            if outcome is api.Outcome.OK:
                if await self.limiter.succeeded():
                    self._count(stats_keys.THROTTLE_INCREASES)
                self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)
                assert response is not None
                return response
            if outcome is api.Outcome.INVALID:
                self._count(stats_keys.PAGES_FAILED)
                logger.error("API refused %s: %d %s", request, answer.code,
                             answer.message or api.ERROR_CODES[answer.code].meaning)
                raise ApiError(f"API answered {answer.code}", str(answer.code))
            if outcome in STOPPING_OUTCOMES:
                raise ApiError(f"API answered {answer.code}", str(answer.code))
            if outcome is api.Outcome.THROTTLED and await self.limiter.throttled():
                self._count(stats_keys.THROTTLE_DECREASES)
                self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)
            attempt = await self._retry(attempt, answer)

    async def _attempt(self, request: Request) -> tuple[Answer, JsonResponse | None]:
        """One paid call: wait for a permit, download, classify.

        The permit is held until the answer is classified, so that after a 439 no waiting
        request can take the freed permit before the limiter is closed.
        """
        try:
            await self.limiter.acquire()
        except LimiterClosed:
            raise ApiError("crawl stopping; not sent", "not_sent") from None
        self._count(stats_keys.REQUESTS)
        try:
            answer, response = await self._download(request)
            reason = STOPPING_OUTCOMES.get(api.outcome_of(answer.code))
            if reason is not None:
                await self._stop(reason, answer)
        finally:
            await self.limiter.release()
        return answer, response

    async def _download(self, request: Request) -> tuple[Answer, JsonResponse | None]:
        """Download a token-bearing copy; hand back a token-free response."""
        signed = request.replace(url=credentials.signed_url(request.url, self.token))
        signed.headers["Accept-Encoding"] = "identity"
        try:
            raw = await self.crawler.engine.downloader.handlers.download_request_async(signed)
        except Exception as exc:  # every transport failure is retried, bounded
            self._count(stats_keys.answer(type(exc).__name__))
            return Answer(0, credentials.redact(str(exc), self.token) or type(exc).__name__), None
        response = raw.replace(cls=JsonResponse, url=request.url, request=request)
        try:
            answer = read_answer(response)
        except BrokenAnswer as exc:
            self._count(stats_keys.answer(exc.reason))
            return Answer(0, exc.reason), None
        self._count(stats_keys.answer(answer.code))
        return answer, response

    async def _retry(self, request: Request, answer: Answer) -> Request:
        """Wait out an exponential backoff with full jitter, or give up."""
        reason = str(answer.code) if answer.code else answer.message.split(":")[0]
        retry = get_retry_request(
            request,
            spider=self.crawler.spider,
            reason=reason,
            max_retry_times=self.max_retry_times,
            stats_base_key=stats_keys.RETRY,
        )
        if retry is None:
            self._count(stats_keys.PAGES_FAILED)
            raise ApiError(f"gave up after {answer.code or answer.message}", reason)
        tries = retry.meta["retry_times"]
        delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (tries - 1)))
        await self._sleep(delay)
        return retry

    async def _sleep(self, delay: float) -> None:
        """Back off, but wake up at once when the crawl is stopping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            if self.limiter.closed or not self.crawler.crawling:
                raise ApiError("crawl stopping; retry not sent", "not_sent")
            await asyncio.sleep(min(remaining, 0.5))

    async def _stop(self, reason: str, answer: Answer) -> None:
        """Close the crawl once, without waiting for the requests still in flight."""
        if self._stopping:
            return
        self._stopping = reason
        await self.limiter.close(reason)
        logger.error("API answered %d (%s): stopping the crawl", answer.code,
                     api.ERROR_CODES[answer.code].meaning)
        close_spider(self.crawler, reason)

    def _count(self, key: str, value: Any = 1) -> None:
        self.stats.inc_value(key, value)
