"""The transport middleware in-process: every path of one API request, driven directly.

Each test builds the crawler from the project's settings (``tests/inprocess.py``), takes its
``TmapiTransportMiddleware`` and calls ``process_request`` as the downloader would, against the
sandbox over real HTTP — and, for the token's sake, against a real listening socket that must
never hear from it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.http import Response
from scrapy.settings import default_settings
from scrapy.utils.misc import load_object

from tests.crawling import TOKEN
from tests.inprocess import (
    crawler_for,
    engine_stopped,
    project_settings,
    spider_closed,
    spider_opened,
    until,
)
from tests.servers import RedisProcess
from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.frontier.context import CALLS_META, META_KEY, PageContext
from tmapi_crawler.frontier.paging import page_url
from tmapi_crawler.plan import Query
from tmapi_crawler.sandbox.misbehaviour import COMPRESSIONS
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import free_port
from tmapi_crawler.transport.call import ApiError
from tmapi_crawler.transport.http import ApiDownloadHandler
from tmapi_crawler.transport.middleware import TmapiTransportMiddleware

FAST_RETRIES = {"TMAPI_RETRY_TIMES": 2, "TMAPI_RETRY_BASE_DELAY": 0.01,
                "TMAPI_RETRY_MAX_DELAY": 0.02}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"101": 95, "102": 40}) as process:
        yield process


class Listener:
    """A real TCP socket that records every connection and what it was sent.

    ``answer``: bytes to send back to each connection (e.g. an HTTP response); else it closes.
    """

    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                        data += chunk
                    self.received.append(data)
                    if self.answer:
                        connection.sendall(self.answer)
                except OSError:
                    self.received.append(data)


def api_request(base_url: str, cat_id: int = 101, page: int = 1, *, page_size: int = 20,
                url: str | None = None, **meta: Any) -> Request:
    query = Query.from_dict({"cat_id": cat_id, "page_size": page_size})
    context = PageContext(query, page=page)
    return Request(url or page_url(base_url, query, page),
                   meta={META_KEY: context.to_dict(), **meta})


Scenario = Callable[[Crawler, TmapiTransportMiddleware], Awaitable[Any]]


def run(base_url: str, scenario: Scenario, module: str = "tmapi_crawler.settings",
        **settings: Any) -> tuple[Any, dict[str, Any]]:
    """Open a crawler on ``base_url``, run ``scenario`` with its transport; return what it
    returned and the crawl's stats."""

    async def main() -> tuple[Any, dict[str, Any]]:
        crawler = crawler_for(project_settings(module, TMAPI_BASE_URL=base_url, **settings))
        transport = crawler.get_downloader_middleware(TmapiTransportMiddleware)
        assert transport is not None
        await spider_opened(crawler)
        try:
            result = await scenario(crawler, transport)
        finally:
            await spider_closed(crawler)
            await engine_stopped(crawler)
        return result, crawler.stats.get_stats()

    return asyncio.run(main())


async def outcome(transport: TmapiTransportMiddleware, request: Request) -> Response | str:
    """The response, or the reason the page was given up on."""
    try:
        response = await transport.process_request(request)
    except ApiError as error:
        return error.reason
    assert isinstance(response, Response)
    return response


def only(request: Request) -> Scenario:
    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        return await outcome(transport, request)
    return scenario


def test_an_answer_comes_back_decoded_and_token_free(sandbox: SandboxProcess) -> None:
    request = api_request(sandbox.url)
    response, stats = run(sandbox.url, only(request))
    assert isinstance(response, Response)
    assert response.url == request.url
    assert response.request is request
    assert TOKEN not in response.url
    assert len(response.json()["data"]["items"]) == 20
    assert stats[stats_keys.REQUESTS] == 1
    assert stats[stats_keys.answer(200)] == 1
    assert sandbox.stats()["requests"] == 1


def test_the_api_is_called_through_the_projects_http_client_without_a_warning(
        sandbox: SandboxProcess, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        assert isinstance(await outcome(transport, api_request(sandbox.url)), Response)
        return crawler.engine.downloader.handlers._get_handler("http")

    with caplog.at_level(logging.WARNING):
        handler, _ = run(sandbox.url, scenario)
    assert isinstance(handler, ApiDownloadHandler)
    assert not [r for r in caplog.records if "experimental" in r.getMessage()]


@pytest.mark.parametrize("encoding", COMPRESSIONS)
def test_compressed_answers_are_read_and_decoded_once(
    sandbox: SandboxProcess, encoding: str
) -> None:
    """The server compresses although the client may have asked for identity."""
    sandbox.configure(compress=encoding)
    request = api_request(sandbox.url)
    response, stats = run(sandbox.url, only(request), **FAST_RETRIES)
    assert isinstance(response, Response), response
    assert len(response.json()["data"]["items"]) == 20
    assert stats[stats_keys.REQUESTS] == 1
    assert stats.get("httpcompression/response_count") == 1
    assert b"Content-Encoding" not in response.headers
    # Scrapy's own HttpCompressionMiddleware runs after: nothing is left for it to decode.

    async def again() -> Response:
        crawler = crawler_for(project_settings(TMAPI_BASE_URL=sandbox.url))
        decoded = HttpCompressionMiddleware(crawler=crawler).process_response(request, response)
        await engine_stopped(crawler)
        return decoded

    assert asyncio.run(again()).body == response.body


def test_a_decompression_bomb_stops_at_download_maxsize(sandbox: SandboxProcess) -> None:
    sandbox.configure(compress="gzip")
    request = api_request(sandbox.url, page_size=95)
    signed = request.url + f"&{api.TOKEN_PARAM}={TOKEN}"
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(urllib.request.Request(signed)) as answer:
        compressed = answer.read()
    inflated = len(gzip.decompress(compressed))
    assert len(compressed) * 2 < inflated
    sandbox.reset()
    reason, stats = run(sandbox.url, only(request), **FAST_RETRIES,
                        DOWNLOAD_MAXSIZE=(len(compressed) + inflated) // 2)
    assert reason == "too_large"
    assert stats[stats_keys.answer("too_large")] == 3
    assert stats[stats_keys.REQUESTS] == 3 == sandbox.stats()["requests"]


def test_a_huge_422_message_is_logged_once_and_cut_short(
    sandbox: SandboxProcess, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.configure(message_bytes=1_000_000)
    caplog.set_level(logging.DEBUG)
    reason, stats = run(sandbox.url, only(api_request(sandbox.url, page_size=500)))
    assert reason == "422"
    assert stats[stats_keys.REQUESTS] == 1
    assert stats[stats_keys.PAGES_FAILED] == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "page_size=500" in errors[0].getMessage()
    assert len(errors[0].getMessage()) < 1000
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


def test_a_439_stops_the_crawl_and_nothing_waiting_is_sent(sandbox: SandboxProcess) -> None:
    sandbox.configure(quota=1, latency=0.2)
    requests = [api_request(sandbox.url, cat_id=101, page=p) for p in (1, 2, 3)]

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        return await asyncio.gather(*(outcome(transport, r) for r in requests))

    outcomes, stats = run(sandbox.url, scenario, TMAPI_CONCURRENCY=1)
    assert isinstance(outcomes[0], Response)
    assert outcomes[1:] == ["439", "not_sent"]
    assert sandbox.stats()["requests"] == 2 == stats[stats_keys.REQUESTS]
    assert stats[stats_keys.REQUESTS_NOT_SENT] == 1
    assert "retry/count" not in str(stats)


def test_503s_lower_the_limit_and_every_page_still_arrives(sandbox: SandboxProcess) -> None:
    sandbox.configure(concurrency_limit=1, latency=0.1)
    requests = [api_request(sandbox.url, cat_id=101, page=p) for p in (1, 2, 3, 4, 5)]

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        return await asyncio.gather(*(outcome(transport, r) for r in requests))

    outcomes, stats = run(sandbox.url, scenario, TMAPI_CONCURRENCY=3,
                          TMAPI_RETRY_BASE_DELAY=0.05, TMAPI_RETRY_MAX_DELAY=0.2)
    assert all(isinstance(o, Response) for o in outcomes), outcomes
    assert sandbox.stats()["answers"].get("503", 0) >= 1
    assert stats[stats_keys.THROTTLE_DECREASES] >= 1
    assert stats[stats_keys.THROTTLE_LIMIT] < 3


def test_an_answer_says_every_call_its_page_took_retries_included(
    sandbox: SandboxProcess,
) -> None:
    """What the cost counts a page's calls from (``tmapi_calls``): a retried page's answer came
    back saying 1, so retries were missing from ``crawl_runs.cost``."""
    sandbox.configure(fault_rates={417: 0.3})
    requests = [api_request(sandbox.url, cat_id=101, page=p) for p in range(1, 21)]

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        return await asyncio.gather(*(outcome(transport, r) for r in requests))

    outcomes, stats = run(sandbox.url, scenario, TMAPI_RETRY_TIMES=8,
                          TMAPI_RETRY_BASE_DELAY=0.001, TMAPI_RETRY_MAX_DELAY=0.01)
    assert all(isinstance(o, Response) for o in outcomes), outcomes
    calls = [o.meta[CALLS_META] for o in outcomes]
    assert max(calls) > 1  # some pages were retried
    assert sum(calls) == stats[stats_keys.REQUESTS] == sandbox.stats()["requests"]


@pytest.mark.parametrize(("fault", "reason"), [
    ({"garbage_rate": 1.0}, "not_json"),
    ({"missing_data_rate": 1.0}, "no_data"),
    ({"fault_rates": {417: 1.0}}, "417"),
])
def test_the_retry_budget_bounds_paid_calls(
    sandbox: SandboxProcess, fault: dict[str, Any], reason: str
) -> None:
    sandbox.configure(**fault)
    outcome_, stats = run(sandbox.url, only(api_request(sandbox.url)), **FAST_RETRIES)
    assert outcome_ == reason
    assert sandbox.stats()["requests"] == 3 == stats[stats_keys.REQUESTS]
    assert stats[f"{stats_keys.RETRY}/reason_count/{reason}"] == 2
    assert stats[f"{stats_keys.RETRY}/max_reached"] == 1
    assert stats[stats_keys.PAGES_FAILED] == 1


def test_transport_failures_are_named_from_a_fixed_vocabulary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url = f"http://127.0.0.1:{free_port()}"
    reason, stats = run(base_url, only(api_request(base_url)), **FAST_RETRIES)
    vocabulary = {"other_error"} | {
        (load_object(c) if isinstance(c, str) else c).__name__
        for c in default_settings.RETRY_EXCEPTIONS
    }
    assert reason in vocabulary
    assert stats[stats_keys.REQUESTS] == 3
    for prefix in (stats_keys.ANSWERS, f"{stats_keys.RETRY}/reason_count/"):
        named = stats_keys.with_prefix(stats, prefix)
        assert named, prefix
        assert set(named) <= vocabulary, named
    assert TOKEN not in caplog.text


def test_a_proxy_in_the_request_never_gets_the_token(sandbox: SandboxProcess) -> None:
    """What a request from Redis or a foreign component may carry cannot redirect the token."""
    with Listener() as listener:
        request = api_request(
            sandbox.url, proxy=listener.url, download_slot=listener.url,
            bindaddress=("127.0.0.1", 0), _auth_proxy=listener.url,
        )
        request.headers["Proxy-Authorization"] = "Basic eDp5"
        request.headers["Host"] = f"127.0.0.1:{listener.port}"
        response, _ = run(sandbox.url, only(request))
    assert listener.received == []
    assert isinstance(response, Response), response
    assert len(response.json()["data"]["items"]) == 20
    assert sandbox.stats()["requests"] == 1


@pytest.mark.parametrize("where", ["other_port", "other_path", "userinfo", "token_given"])
def test_a_request_not_to_the_api_is_refused_unsigned(
    sandbox: SandboxProcess, where: str
) -> None:
    with Listener() as listener:
        host = sandbox.url.removeprefix("http://")
        url = {
            "other_port": f"{listener.url}{api.PATH}?cat_id=101&page=1",
            "other_path": f"{sandbox.url}/_sandbox/stats?cat_id=101",
            "userinfo": f"http://x@{host}{api.PATH}?cat_id=101&page=1",
            "token_given": f"{sandbox.url}{api.PATH}?cat_id=101&page=1&apiToken=x",
        }[where]
        reason, stats = run(sandbox.url, only(api_request(sandbox.url, url=url)))
    assert reason == "foreign_request"
    assert listener.received == []
    assert sandbox.stats()["requests"] == 0
    assert stats[stats_keys.REQUESTS_REFUSED] == 1
    assert stats_keys.REQUESTS not in stats


def test_the_environment_proxy_is_the_operators_choice(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``http_proxy`` set by whoever runs the crawler is honoured (Scrapy's HttpProxyMiddleware
    reads it); a proxy in a request's meta never is (the test above)."""
    body = b'{"code": 200, "msg": "success", "data": {"items": []}}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with Listener(answer) as listener:
        for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", listener.url)
        response, _ = run(sandbox.url, only(api_request(sandbox.url)))
    assert isinstance(response, Response), response
    assert len(listener.received) == 1
    assert listener.received[0].startswith(f"GET {sandbox.url}{api.PATH}?".encode())
    assert sandbox.stats()["requests"] == 0


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.uri


def one_permit(limiter: str, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Settings module and settings for a limit of 1, with the local or the Redis limiter."""
    settings: dict[str, Any] = {"TMAPI_CONCURRENCY": 1}
    if limiter == "adaptive":
        return "tmapi_crawler.settings", settings
    settings.update(REDIS_URL=request.getfixturevalue("redis_url"),
                    TMAPI_REDIS_PREFIX=f"t{uuid.uuid4().hex[:8]}")
    return "settings_profiles.distributed", settings


@pytest.mark.parametrize("limiter", ["adaptive", "redis"])
def test_after_a_stop_no_request_waiting_for_a_permit_is_sent(
    sandbox: SandboxProcess, limiter: str, request: pytest.FixtureRequest
) -> None:
    """Ctrl-C (Scrapy's graceful stop): the request in flight completes, no other is sent."""
    sandbox.configure(latency=0.5)
    requests = [api_request(sandbox.url, cat_id=101, page=p) for p in (1, 2, 3, 4)]
    module, settings = one_permit(limiter, request)

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[Any]:
        pending = [asyncio.ensure_future(outcome(transport, r)) for r in requests]
        await until(lambda: crawler.stats.get_value(stats_keys.REQUESTS) == 1,
                    what="the first request sent")
        await crawler.stop_async()  # what Scrapy does on the first Ctrl-C
        return await asyncio.wait_for(asyncio.gather(*pending), 30)

    outcomes, stats = run(sandbox.url, scenario, module, **settings)
    assert sum(isinstance(o, Response) for o in outcomes) == 1
    assert sorted(o for o in outcomes if isinstance(o, str)) == ["not_sent"] * 3
    assert sandbox.stats()["requests"] == 1 == stats[stats_keys.REQUESTS]
    assert stats[stats_keys.REQUESTS_NOT_SENT] == 3


@pytest.mark.parametrize("limiter", ["adaptive", "redis"])
def test_a_freed_permit_sends_the_next_call_before_the_answer_goes_on(
    sandbox: SandboxProcess, limiter: str, request: pytest.FixtureRequest
) -> None:
    """At a limit of 1, when the first answer leaves the transport (to be parsed and stored),
    the page that waited for its permit has been sent already: the account's permit does not
    sit idle behind the processing of answers."""
    sandbox.configure(latency=0.2)  # the second page waits before the first is answered
    first, second = (api_request(sandbox.url, cat_id=101, page=p) for p in (1, 2))
    module, settings = one_permit(limiter, request)

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> list[int]:
        sent_when_answered: list[int] = []

        async def answered(page: Request) -> None:
            await transport.process_request(page)
            sent_when_answered.append(crawler.stats.get_value(stats_keys.REQUESTS))

        pages = [asyncio.ensure_future(answered(first))]
        await until(lambda: crawler.stats.get_value(stats_keys.REQUESTS) == 1,
                    what="the first call sent")
        pages.append(asyncio.ensure_future(answered(second)))
        await asyncio.wait_for(asyncio.gather(*pages), 30)
        return sent_when_answered

    sent_when_answered, stats = run(sandbox.url, scenario, module, **settings)
    assert sent_when_answered == [2, 2]
    assert sandbox.stats()["requests"] == 2 == stats[stats_keys.REQUESTS]


def test_after_a_stop_a_request_backing_off_is_not_sent_again(sandbox: SandboxProcess) -> None:
    sandbox.configure(fault_rates={417: 1.0})

    async def scenario(crawler: Crawler, transport: TmapiTransportMiddleware) -> Any:
        pending = asyncio.ensure_future(outcome(transport, api_request(sandbox.url)))
        await until(lambda: crawler.stats.get_value(f"{stats_keys.RETRY}/count") == 1,
                    what="the first retry scheduled")
        sent = crawler.stats.get_value(stats_keys.REQUESTS)
        await crawler.stop_async()
        # The backoff is minutes long (full jitter up to 1000 s): only the stop ends it.
        return sent, await asyncio.wait_for(pending, 30)

    (sent, reason), stats = run(sandbox.url, scenario, TMAPI_RETRY_BASE_DELAY=1000,
                                TMAPI_RETRY_MAX_DELAY=1000)
    assert reason == "not_sent"
    assert stats[stats_keys.REQUESTS] == sent == sandbox.stats()["requests"]


def test_the_token_is_in_no_log_line(sandbox: SandboxProcess,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.configure(fault_rates={417: 0.5, 500: 0.5}, message_bytes=300)
    _, stats = run(sandbox.url, only(api_request(sandbox.url)), **FAST_RETRIES)
    assert stats[stats_keys.REQUESTS] == 3
    assert TOKEN not in caplog.text
    assert TOKEN not in json.dumps(stats, default=str)
