"""The downloader middleware that owns the API's transport rules: the loop around each paid
call (``transport.call``, which checks the target, signs, downloads, decodes and classifies).

It sits closest to the downloader and downloads API requests itself, so that:

* a request not to ``TMAPI_BASE_URL``'s API path is refused before anything else
  (``PaidCall.check``), and the token travels only on the call's private copy;
* a request waits for a concurrency permit while it already holds a ``CONCURRENT_REQUESTS``
  slot, and keeps both through its retries and backoff — a retry is not re-queued behind
  thousands of other requests, and never exceeds the account's limit;
* the budget (``TMAPI_MAX_REQUESTS``, ``transport.budget``) is asked right before each call,
  after its permit: a call it refuses is not sent, and the crawl closes with
  ``tmapi_budget_exhausted``;
* once the crawl stops (a 439, the budget, Ctrl-C), no new paid call starts: requests waiting for a
  permit or backing off give up at once (``closing.StopGuard`` says when);
* a successful answer is kept in the answer spool (``storage.spool``) before its permit is
  released, so a page paid for is durable before the next call starts; a page whose answer
  the spool holds (a resume after a kill) is handed back from it: no permit, no budget, no
  call;
* what an answer means (``Answer.outcome``) decides: handed back, given up on, retried with
  backoff (a 503 also lowers the limit), or the whole crawl stopped.

Every other middleware's ``process_response`` still runs on the response returned here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.http import JsonResponse, Request, Response
from scrapy.utils.misc import build_from_crawler

from tmapi_crawler import api, closing
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.aio import Interrupted, Interrupter
from tmapi_crawler.deprecations import load_class
from tmapi_crawler.frontier.context import (
    CALLS_META,
    META_KEY,
    SPOOLED_CALLS_META,
    PageContext,
)
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.transport import credentials
from tmapi_crawler.transport.answers import Answer, ApiResponse, BrokenAnswer, read_answer
from tmapi_crawler.transport.budget import Budget
from tmapi_crawler.transport.call import ApiError, PaidCall
from tmapi_crawler.transport.limiter import Limiter, LimiterClosed

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: A page the crawl's stop kept from being sent; a cluster queues it again for a resume.
NOT_SENT: Final = "not_sent"
#: Event-loop rounds an answer lets go by after its release, before it is processed (``_attempt``).
_ROUNDS_FOR_THE_NEXT_CALL: Final = 2


class TmapiTransportMiddleware:
    def __init__(self, crawler: Crawler, token: str, limiter: Limiter, budget: Budget) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.call = PaidCall(crawler, token)
        self.limiter = limiter
        self.budget = budget
        self.spool = Spool.of(crawler)
        self.max_retry_times = settings.getint("TMAPI_RETRY_TIMES")
        self.base_delay = settings.getfloat("TMAPI_RETRY_BASE_DELAY")
        self.max_delay = settings.getfloat("TMAPI_RETRY_MAX_DELAY")
        self._log_filter = credentials.RedactingFilter(token)
        self._stopping = Interrupter()
        self._stopped: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TmapiTransportMiddleware:
        settings = crawler.settings
        token = credentials.token_from_settings(settings)
        base_url = settings["TMAPI_BASE_URL"]
        if base_url.startswith("http://"):
            logger.warning(
                "TMAPI_BASE_URL %s is plain http: the API token travels unencrypted", base_url
            )
        limiter = build_from_crawler(load_class(settings, "TMAPI_LIMITER"), crawler)
        budget = build_from_crawler(load_class(settings, "TMAPI_BUDGET"), crawler)
        mw = cls(crawler, token, limiter, budget)
        crawler.signals.connect(mw.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(mw.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(mw.crawl_stopping, signal=tmapi_signals.crawl_stopping)
        logger.info("API token %s", credentials.fingerprint(token))
        return mw

    def spider_opened(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_filter)
        self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)
        if self.budget.maximum:
            self.stats.set_value(stats_keys.BUDGET, self.budget.maximum)

    def crawl_stopping(self) -> None:
        """Wake every request waiting for a permit or backing off: none of them is sent."""
        self._stopping.set()

    async def spider_closed(self) -> None:
        await self.limiter.close()
        self.stats.set_value(stats_keys.THROTTLE_PEAK, self.limiter.peak)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_filter)

    async def process_request(self, request: Request) -> Response | None:
        if META_KEY not in request.meta:
            return None
        self.call.check(request)
        # The page's name in the spool, worked out before any permit is held.
        key = PageContext.from_dict(request.meta[META_KEY]).key
        if self.spool.replaying and (spooled := await self._spooled(request, key)) is not None:
            return spooled
        attempt = request
        request.meta[CALLS_META] = 0
        while True:
            answer, response = await self._attempt(attempt, request, key)
            outcome = answer.outcome
            if outcome is api.Outcome.OK:
                if await self.limiter.succeeded():
                    self._count(stats_keys.THROTTLE_INCREASES)
                self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)
                assert response is not None
                # The answer is a retry copy's: its meta was copied before the later calls.
                response.meta[CALLS_META] = request.meta[CALLS_META]
                return response
            if outcome is api.Outcome.INVALID:
                self._count(stats_keys.PAGES_FAILED)
                logger.error("API refused %s: %d %s", request, answer.code,
                             answer.message or api.ERROR_CODES[answer.code].meaning)
                raise ApiError(f"API answered {answer.code}", answer.reason)
            if outcome in closing.STOPPING_OUTCOMES:
                raise ApiError(f"API answered {answer.code}", answer.reason)
            if outcome is api.Outcome.THROTTLED and await self.limiter.throttled():
                self._count(stats_keys.THROTTLE_DECREASES)
                self.stats.set_value(stats_keys.THROTTLE_LIMIT, self.limiter.limit)
            attempt = await self._retry(attempt, answer)

    async def _spooled(self, request: Request, key: str) -> JsonResponse | None:
        """The page's answer from the spool (paid for by an interrupted run), if it is there:
        the response the transport handed back then, for free."""
        document = await self.spool.answer(key)
        if document is None:
            return None
        response = ApiResponse(request.url, status=document["status"],
                               body=bytes(document["body"]), encoding=document["encoding"],
                               request=request, flags=["spooled"])
        try:
            answer = read_answer(response)
        except BrokenAnswer:
            return None
        if answer.outcome is not api.Outcome.OK:
            return None
        calls = int(document.get("calls", 1))
        request.meta[CALLS_META] = 0
        request.meta[SPOOLED_CALLS_META] = calls
        self._count(stats_keys.SPOOL_REPLAYED)
        self._count(stats_keys.RESUME_CALLS_SAVED, calls)
        return response

    def _stopping_now(self) -> bool:
        return self._stopping.is_set() or self.limiter.closed or closing.stopping(self.crawler)

    async def _unless_stopping(self, wait: Callable[..., Awaitable[Any]], *args: Any,
                               undo: Callable[[], Awaitable[None]] | None = None,
                               not_sent: str) -> None:
        """``await wait(*args)`` — unless the crawl stops first, or stopped meanwhile (then
        ``undo`` what the wait took): the request is not sent (``not_sent`` says which)."""
        if not self._stopping_now():
            try:
                await self._stopping.run(wait, *args)
            except (Interrupted, LimiterClosed):
                pass
            else:
                if not self._stopping_now():
                    return
                if undo is not None:
                    await undo()
        self._count(stats_keys.REQUESTS_NOT_SENT)
        raise ApiError(f"crawl stopping; {not_sent}", NOT_SENT)

    async def _attempt(self, request: Request, page: Request, key: str
                       ) -> tuple[Answer, JsonResponse | None]:
        """One paid call with its permit: wait for the permit, spend, call, keep or stop.

        The permit is held until the answer is classified, so that after a 439 no waiting
        request can take the freed permit before the limiter is closed — and a success until
        its answer is in the spool, so that no new call starts while a paid page is not
        durable.

        Then this answer lets the event loop go round twice before it goes on to be parsed and
        stored: the request the permit was handed to (woken by the release) sends its call
        first, instead of waiting behind this answer's processing — and, when answers come
        back together, every request their releases woke sends before any of them is
        processed (one round would put the first answer's processing before the second
        answer's woken request). Measured in B5 (BENCHMARKS.md, sixth round).
        """
        await self._unless_stopping(self.limiter.acquire, undo=self.limiter.release,
                                    not_sent="not sent")
        try:
            await self._spend()
            page.meta[CALLS_META] += 1
            answer, response = await self.call.send(request)
            outcome = answer.outcome
            if outcome is api.Outcome.OK and response is not None:
                await self._keep(page, key, response)
            reason = closing.STOPPING_OUTCOMES.get(outcome)
            if reason is not None:
                await self._stop(reason, "API answered %d (%s): stopping the crawl",
                                 answer.code, api.ERROR_CODES[answer.code].meaning)
        finally:
            await self.limiter.release()
        for _ in range(_ROUNDS_FOR_THE_NEXT_CALL):
            await asyncio.sleep(0)
        return answer, response

    async def _keep(self, page: Request, key: str, response: JsonResponse) -> None:
        """Spool the answer, without a trace of the token, while the permit is still held."""
        await self.spool.keep(key, page.meta[META_KEY], self.call.without_token(response.body),
                              status=response.status, encoding=response.encoding,
                              calls=page.meta[CALLS_META])

    async def _spend(self) -> None:
        """Take the call from the budget, or stop the crawl (resumable) without sending it."""
        try:
            allowed = await self.budget.spend()
        except LimiterClosed:
            allowed = None
        if not allowed:
            self._count(stats_keys.REQUESTS_NOT_SENT)
            if allowed is False:
                await self._stop(closing.BUDGET_EXHAUSTED,
                                 "Budget of %d paid calls (TMAPI_MAX_REQUESTS) spent: stopping "
                                 "the crawl; run the same command again to resume it",
                                 self.budget.maximum)
            raise ApiError("budget spent; not sent", NOT_SENT)

    async def _retry(self, request: Request, answer: Answer) -> Request:
        """Wait out an exponential backoff with full jitter, or give up."""
        retry = get_retry_request(
            request,
            spider=self.crawler.spider,
            reason=answer.reason,
            max_retry_times=self.max_retry_times,
            stats_base_key=stats_keys.RETRY,
        )
        if retry is None:
            self._count(stats_keys.PAGES_FAILED)
            raise ApiError(f"gave up after {answer.reason}", answer.reason)
        tries = retry.meta["retry_times"]
        delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (tries - 1)))
        # Backing off gives up at once when the crawl is stopping: the retry is not sent.
        await self._unless_stopping(asyncio.sleep, delay, not_sent="retry not sent")
        return retry

    async def _stop(self, reason: str, message: str, *args: Any) -> None:
        """Close the limiter (for every worker) and the crawl with ``reason``, once, without
        waiting for the requests still in flight; ``message`` is logged as the error."""
        if self._stopped:
            return
        self._stopped = reason
        await self.limiter.close(reason)
        logger.error(message, *args)
        closing.close_spider(self.crawler, reason)

    def _count(self, key: str, value: Any = 1) -> None:
        self.stats.inc_value(key, value)
