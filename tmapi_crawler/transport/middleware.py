"""The downloader middleware that owns the API's transport rules.

It sits closest to the downloader and downloads API requests itself, so that:

* the token is added at the last moment to a private copy that is built afresh — only the
  URL (checked to be ``TMAPI_BASE_URL``'s API path first), a few harmless headers and the
  operator's own proxy from the environment; nothing another component put in the request's
  meta or headers (``proxy``, ``download_slot``, ``Proxy-Authorization``, …) can send the
  token anywhere else — and the token never enters ``Request.url``, the scheduler,
  fingerprints, logs or the returned response;
* a request waits for a concurrency permit while it already holds a ``CONCURRENT_REQUESTS``
  slot, and keeps both through its retries and backoff — a retry is not re-queued behind
  thousands of other requests, and never exceeds the account's limit;
* the budget (``TMAPI_MAX_REQUESTS``, ``transport.budget``) is asked right before each call,
  after its permit: a call it refuses is not sent, and the crawl closes with
  ``tmapi_budget_exhausted``;
* once the crawl stops (a 439, the budget, Ctrl-C), no new paid call starts: requests waiting for a
  permit or backing off give up at once (``closing.StopGuard`` says when);
* the body is decompressed (gzip, deflate, br, zstd: Scrapy's ``HttpCompressionMiddleware``,
  bounded by ``DOWNLOAD_MAXSIZE``) before its code is read — also when the server compressed
  an answer it was not asked to; the response handed back is decoded, so that middleware
  later finds nothing left to decode;
* a successful answer is kept in the answer spool (``storage.spool``) before its permit is
  released, so a page paid for is durable before the next call starts; a page whose answer
  the spool holds (a resume after a kill) is handed back from it: no permit, no budget, no
  call;
* every answer code is classified once, by ``tmapi_crawler.api``, whether it came as the HTTP
  status or inside a 200 body, and named in stats and logs from a bounded vocabulary
  (``transport.answers``).

Every other middleware's ``process_response`` still runs on the response returned here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote, urlsplit

from scrapy import signals
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import JsonResponse, Request, Response
from scrapy.utils.misc import build_from_crawler, load_object

from tmapi_crawler import api, closing
from tmapi_crawler import signals as tmapi_signals
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.aio import Interrupted, Interrupter
from tmapi_crawler.deprecations import load_class
from tmapi_crawler.frontier.context import META_KEY, PageContext
from tmapi_crawler.quoting import shown
from tmapi_crawler.storage.spool import Spool
from tmapi_crawler.transport import credentials
from tmapi_crawler.transport.answers import (
    BAD_ENCODING,
    OTHER_ERROR,
    TOO_LARGE,
    Answer,
    BrokenAnswer,
    failure_name,
    read_answer,
)
from tmapi_crawler.transport.budget import Budget
from tmapi_crawler.transport.limiter import Limiter, LimiterClosed

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: ``Request.meta`` key: the paid calls this page took, retries included (set by the transport).
CALLS_META: Final = "tmapi_calls"
#: ``Request.meta`` key: an answer handed back from the spool, the paid calls it had taken.
SPOOLED_CALLS_META: Final = "tmapi_spooled_calls"
#: A page the crawl's stop kept from being sent; a cluster queues it again for a resume.
NOT_SENT: Final = "not_sent"
#: A request that is not to ``TMAPI_BASE_URL``'s API path: refused, never signed.
FOREIGN_REQUEST: Final = "foreign_request"
#: What the token-bearing copy keeps of the request's headers: none of them can redirect it.
_KEPT_HEADERS: Final = (b"Accept", b"Accept-Encoding", b"Accept-Language", b"User-Agent")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Event-loop rounds an answer lets go by after its release, before it is processed (``_attempt``).
_ROUNDS_FOR_THE_NEXT_CALL: Final = 2


class ApiError(IgnoreRequest):
    """A page the crawler gave up on; ``reason`` says why, from the bounded vocabulary."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _target(url: str) -> tuple[str, str | None, int | None, str] | None:
    """What a request URL must match to be signed: scheme, host, port, path."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or parts.fragment:
        return None
    return parts.scheme, parts.hostname, port, parts.path


class TmapiTransportMiddleware:
    def __init__(self, crawler: Crawler, token: str, limiter: Limiter, budget: Budget) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.token = token
        self.limiter = limiter
        self.budget = budget
        self.spool = Spool.of(crawler)
        self.base_url: str = settings["TMAPI_BASE_URL"]
        self.max_retry_times = settings.getint("TMAPI_RETRY_TIMES")
        self.base_delay = settings.getfloat("TMAPI_RETRY_BASE_DELAY")
        self.max_delay = settings.getfloat("TMAPI_RETRY_MAX_DELAY")
        self.timeout = settings.getfloat("DOWNLOAD_TIMEOUT")
        self._api = _target(self.base_url.rstrip("/") + api.PATH)
        #: The transport failures named in stats (anything else is ``other_error``).
        self._failures = tuple(
            load_object(cls) if isinstance(cls, str) else cls
            for cls in settings.getlist("RETRY_EXCEPTIONS")
        )
        # Scrapy's own decompression, with its DOWNLOAD_MAXSIZE/WARNSIZE bounds, run here on
        # the raw answer whatever COMPRESSION_ENABLED says: a server may compress unasked.
        self._decoder = HttpCompressionMiddleware(crawler=crawler)
        # The operator's proxy from the environment (http_proxy, https_proxy, no_proxy) is
        # their choice; a proxy in a request's meta is nobody's to make.
        try:
            self._proxy: HttpProxyMiddleware | None = HttpProxyMiddleware.from_crawler(crawler)
        except NotConfigured:
            self._proxy = None
        self._log_filter = credentials.RedactingFilter(token)
        #: The token as an answer could echo it (raw, URL-quoted), and what replaces it.
        self._token_forms = tuple({token.encode(), quote(token, safe="").encode()})
        self._redacted = credentials.REDACTED.encode()
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
        self._check_target(request)
        # The page's name in the spool, worked out before any permit is held.
        key = PageContext.from_dict(request.meta[META_KEY]).key
        if self.spool.replaying and (spooled := await self._spooled(request, key)) is not None:
            return spooled
        attempt = request
        request.meta[CALLS_META] = 0
        while True:
            answer, response = await self._attempt(attempt, request, key)
            outcome = api.outcome_of(answer.code)
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

    def _check_target(self, request: Request) -> None:
        """Sign nothing but a GET of the API path of ``TMAPI_BASE_URL``."""
        target = _target(request.url)
        query = urlsplit(request.url).query
        if (target is not None and target == self._api and request.method == "GET"
                and not request.body and api.TOKEN_PARAM not in parse_qs(query)):
            return
        self._count(stats_keys.REQUESTS_REFUSED)
        self._count(stats_keys.PAGES_FAILED)
        logger.error("Refused to send the token to %s: not the API at %s",
                     shown(request.url), self.base_url)
        raise ApiError("not a request to TMAPI_BASE_URL; not sent", FOREIGN_REQUEST)

    async def _spooled(self, request: Request, key: str) -> JsonResponse | None:
        """The page's answer from the spool (paid for by an interrupted run), if it is there:
        the response the transport handed back then, for free."""
        document = await self.spool.answer(key)
        if document is None:
            return None
        response = JsonResponse(request.url, status=document["status"],
                                body=bytes(document["body"]), encoding=document["encoding"],
                                request=request, flags=["spooled"])
        try:
            answer = read_answer(response)
        except BrokenAnswer:
            return None
        if api.outcome_of(answer.code) is not api.Outcome.OK:
            return None
        calls = int(document.get("calls", 1))
        request.meta[CALLS_META] = 0
        request.meta[SPOOLED_CALLS_META] = calls
        self._count(stats_keys.SPOOL_REPLAYED)
        self._count(stats_keys.RESUME_CALLS_SAVED, calls)
        return response

    def _stopping_now(self) -> bool:
        return self._stopping.is_set() or self.limiter.closed or closing.stopping(self.crawler)

    async def _permit(self) -> None:
        """A permit — unless the crawl stops first, or stopped while this one waited."""
        if not self._stopping_now():
            try:
                await self._stopping.run(self.limiter.acquire)
            except (Interrupted, LimiterClosed):
                pass
            else:
                if not self._stopping_now():
                    return
                await self.limiter.release()
        self._count(stats_keys.REQUESTS_NOT_SENT)
        raise ApiError("crawl stopping; not sent", NOT_SENT)

    async def _attempt(self, request: Request, page: Request, key: str
                       ) -> tuple[Answer, JsonResponse | None]:
        """One paid call: wait for a permit, download, classify.

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
        await self._permit()
        try:
            await self._spend()
            self._count(stats_keys.REQUESTS)
            page.meta[CALLS_META] += 1
            answer, response = await self._download(request)
            outcome = api.outcome_of(answer.code)
            if outcome is api.Outcome.OK and response is not None:
                await self._keep(page, key, response)
            reason = closing.STOPPING_OUTCOMES.get(outcome)
            if reason is not None:
                await self._stop(reason, answer)
        finally:
            await self.limiter.release()
        for _ in range(_ROUNDS_FOR_THE_NEXT_CALL):
            await asyncio.sleep(0)
        return answer, response

    async def _keep(self, page: Request, key: str, response: JsonResponse) -> None:
        """Spool the answer, without a trace of the token, while the permit is still held."""
        body = response.body
        for secret in self._token_forms:
            body = body.replace(secret, self._redacted)
        await self.spool.keep(key, page.meta[META_KEY], body,
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
            if allowed is False and not self._stopped:
                self._stopped = closing.BUDGET_EXHAUSTED
                await self.limiter.close(closing.BUDGET_EXHAUSTED)
                logger.error("Budget of %d paid calls (TMAPI_MAX_REQUESTS) spent: stopping the "
                             "crawl; run the same command again to resume it",
                             self.budget.maximum)
                closing.close_spider(self.crawler, closing.BUDGET_EXHAUSTED)
            raise ApiError("budget spent; not sent", NOT_SENT)

    def _signed(self, request: Request) -> Request:
        """The token-bearing copy: the URL, harmless headers, the environment's proxy."""
        headers = {name: request.headers.getlist(name) for name in _KEPT_HEADERS
                   if name in request.headers}
        signed = Request(
            credentials.signed_url(request.url, self.token),
            headers=headers,
            meta={"download_timeout": self.timeout},
            dont_filter=True,
        )
        if self._proxy is not None:
            self._proxy.process_request(signed)
        return signed

    async def _download(self, request: Request) -> tuple[Answer, JsonResponse | None]:
        """Download the token-bearing copy; hand back a token-free, decoded response."""
        signed = self._signed(request)
        try:
            raw = await self.crawler.engine.downloader.handlers.download_request_async(signed)
        except Exception as exc:  # every transport failure is retried, bounded
            name = failure_name(exc, self._failures)
            message = shown(credentials.redact(str(exc), self.token) or type(exc).__name__)
            if name == OTHER_ERROR:
                logger.warning("Unexpected failure downloading %s: %s: %s", request,
                               type(exc).__name__, message)
            else:
                logger.debug("Downloading %s failed: %s", request, message)
            self._count(stats_keys.answer(name))
            return Answer(0, message, name), None
        # The token-free URL first: the decoder's own log lines name the response.
        response = raw.replace(url=request.url, request=request)
        try:
            response = self._decoder.process_response(signed, response)
        except IgnoreRequest:  # DOWNLOAD_MAXSIZE exceeded while decompressing; logged
            return self._broken(TOO_LARGE)
        except Exception as exc:
            logger.debug("%s does not decode as it says: %s", response, shown(str(exc)))
            return self._broken(BAD_ENCODING)
        response = response.replace(cls=JsonResponse)
        try:
            answer = read_answer(response)
        except BrokenAnswer as exc:
            return self._broken(exc.reason)
        self._count(stats_keys.answer(answer.code))
        return answer, response

    def _broken(self, reason: str) -> tuple[Answer, None]:
        self._count(stats_keys.answer(reason))
        return Answer(0, reason, reason), None

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
        await self._sleep(delay)
        return retry

    async def _sleep(self, delay: float) -> None:
        """Back off, but give up at once when the crawl is stopping: the retry is not sent."""
        if not self._stopping_now():
            with contextlib.suppress(Interrupted):
                await self._stopping.run(asyncio.sleep, delay)
            if not self._stopping_now():
                return
        self._count(stats_keys.REQUESTS_NOT_SENT)
        raise ApiError("crawl stopping; retry not sent", NOT_SENT)

    async def _stop(self, reason: str, answer: Answer) -> None:
        """Close the crawl once, without waiting for the requests still in flight."""
        if self._stopped:
            return
        self._stopped = reason
        await self.limiter.close(reason)
        logger.error("API answered %d (%s): stopping the crawl", answer.code,
                     api.ERROR_CODES[answer.code].meaning)
        closing.close_spider(self.crawler, reason)

    def _count(self, key: str, value: Any = 1) -> None:
        self.stats.inc_value(key, value)
