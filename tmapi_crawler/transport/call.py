"""One paid call: check the target, sign, download, decode, classify.

Apart from the middleware's loop (spool, permit, budget, retry, stop), as Scrapy's
``get_retry_request`` stands apart from ``RetryMiddleware``: :class:`PaidCall` sends one request
and says what came back, and holds the token — so that

* nothing but a GET of ``TMAPI_BASE_URL``'s API path is ever signed: any other request is
  refused before a copy with the token exists;
* the token is added at the last moment to a private copy that is built afresh — only the
  URL, a few harmless headers and the operator's own proxy from the environment; nothing
  another component put in the request's meta or headers (``proxy``, ``download_slot``,
  ``Proxy-Authorization``, …) can send the token anywhere else — and the token never enters
  ``Request.url``, the scheduler, fingerprints, logs or the returned response;
* the body is decompressed (gzip, deflate, br, zstd: Scrapy's ``HttpCompressionMiddleware``,
  bounded by ``DOWNLOAD_MAXSIZE``) before its code is read — also when the server compressed
  an answer it was not asked to; the response handed back is decoded, so that middleware
  later finds nothing left to decode;
* every answer code is read once, by ``transport.answers``, whether it came as the HTTP status
  or inside a 200 body, and named in stats and logs from a bounded vocabulary; what it means
  (``Answer.outcome``) is ``tmapi_crawler.api``'s to say.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote, urlsplit

from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import JsonResponse, Request
from scrapy.utils.misc import load_object

from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.quoting import shown
from tmapi_crawler.transport import credentials
from tmapi_crawler.transport.answers import (
    BAD_ENCODING,
    OTHER_ERROR,
    TOO_LARGE,
    Answer,
    ApiResponse,
    BrokenAnswer,
    failure_name,
    read_answer,
)

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: A request that is not to ``TMAPI_BASE_URL``'s API path: refused, never signed.
FOREIGN_REQUEST: Final = "foreign_request"
#: What the token-bearing copy keeps of the request's headers: none of them can redirect it.
_KEPT_HEADERS: Final = (b"Accept", b"Accept-Encoding", b"Accept-Language", b"User-Agent")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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


class PaidCall:
    """Sends one API request with the token and reads what came back; counts the call
    (``tmapi/requests``) and its answer (``tmapi/answers/…``) in the crawl's stats."""

    def __init__(self, crawler: Crawler, token: str) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.token = token
        self.base_url: str = settings["TMAPI_BASE_URL"]
        self.timeout = settings.getfloat("DOWNLOAD_TIMEOUT")
        self._api = _target(self.base_url.rstrip("/") + api.PATH)
        self._retry_exceptions = settings.getlist("RETRY_EXCEPTIONS")
        # Scrapy's own decompression, with its DOWNLOAD_MAXSIZE/WARNSIZE bounds, run here on
        # the raw answer whatever COMPRESSION_ENABLED says: a server may compress unasked.
        self._decoder = HttpCompressionMiddleware(crawler=crawler)
        # The operator's proxy from the environment (http_proxy, https_proxy, no_proxy) is
        # their choice; a proxy in a request's meta is nobody's to make.
        try:
            self._proxy: HttpProxyMiddleware | None = HttpProxyMiddleware.from_crawler(crawler)
        except NotConfigured:
            self._proxy = None
        #: The token as an answer could echo it (raw, URL-quoted), and what replaces it.
        self._token_forms = tuple({token.encode(), quote(token, safe="").encode()})
        self._redacted = credentials.REDACTED.encode()

    def check(self, request: Request) -> None:
        """Refuse (``ApiError``, ``foreign_request``) anything but a GET of the API path of
        ``TMAPI_BASE_URL``."""
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

    @functools.cached_property
    def _failures(self) -> tuple[type[BaseException], ...]:
        """The transport failures named in stats (anything else is ``other_error``); loaded at
        the first failure: Scrapy's list names Twisted's HTTP client, whose import was a fifth
        of the start-up of a crawl that never uses it (BENCHMARKS.md, B12)."""
        return tuple(load_object(cls) if isinstance(cls, str) else cls
                     for cls in self._retry_exceptions)

    async def send(self, request: Request) -> tuple[Answer, JsonResponse | None]:
        """The call: a checked request signed, downloaded and read. The response (None for a
        transport failure or a broken answer) is token-free and decoded."""
        self.check(request)
        self._count(stats_keys.REQUESTS)
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
        response = response.replace(cls=ApiResponse)
        try:
            answer = read_answer(response)
        except BrokenAnswer as exc:
            return self._broken(exc.reason)
        self._count(stats_keys.answer(answer.code))
        return answer, response

    def without_token(self, body: bytes) -> bytes:
        """``body`` with every form of the token an answer could echo replaced."""
        for secret in self._token_forms:
            body = body.replace(secret, self._redacted)
        return body

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

    def _broken(self, reason: str) -> tuple[Answer, None]:
        self._count(stats_keys.answer(reason))
        return Answer(0, reason, reason), None

    def _count(self, key: str, value: Any = 1) -> None:
        self.stats.inc_value(key, value)
