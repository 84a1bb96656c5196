"""One paid call on its own (``transport.call.PaidCall``): no middleware, no permit, no retry.

Each test builds the crawler from the project's settings (``tests/inprocess.py``) for its
download handlers and stats, and sends one request through a ``PaidCall`` to the sandbox over
real HTTP — or, for the token's sake, to a real listening socket that must never hear from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from scrapy import Request
from scrapy.http import JsonResponse
from scrapy.settings import default_settings
from scrapy.utils.misc import load_object

from tests.crawling import TOKEN
from tests.inprocess import crawler_for, engine_stopped, project_settings
from tests.test_transport import Listener, api_request
from tmapi_crawler import api
from tmapi_crawler import stats as stats_keys
from tmapi_crawler.sandbox.process import SandboxProcess
from tmapi_crawler.servers import free_port
from tmapi_crawler.transport import credentials
from tmapi_crawler.transport.answers import Answer
from tmapi_crawler.transport.call import FOREIGN_REQUEST, ApiError, PaidCall


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(token=[TOKEN], size={"101": 95}) as process:
        yield process


Sent = tuple[Answer | str, JsonResponse | None, dict[str, Any]]


def send(base_url: str, request: Request, **settings: Any) -> Sent:
    """Send ``request`` once through a ``PaidCall`` on ``base_url``: its answer (or the reason it
    was refused), its response, and the stats it counted."""

    async def main() -> Sent:
        crawler = crawler_for(project_settings(TMAPI_BASE_URL=base_url, **settings))
        call = PaidCall(crawler, TOKEN)
        try:
            answer, response = await call.send(request)
        except ApiError as error:
            return error.reason, None, crawler.stats.get_stats()
        finally:
            await engine_stopped(crawler)
        return answer, response, crawler.stats.get_stats()

    return asyncio.run(main())


def test_one_call_brings_a_decoded_token_free_page(sandbox: SandboxProcess) -> None:
    request = api_request(sandbox.url)
    answer, response, stats = send(sandbox.url, request)
    assert answer == Answer(api.SUCCESS_CODE, "success")
    assert answer.outcome is api.Outcome.OK
    assert isinstance(response, JsonResponse)
    assert response.url == request.url
    assert response.request is request
    assert TOKEN not in response.url
    assert len(response.json()["data"]["items"]) == 20
    assert stats[stats_keys.REQUESTS] == 1 == sandbox.stats()["requests"]
    assert stats[stats_keys.answer(200)] == 1


@pytest.mark.parametrize("mode", ["status", "body"])
@pytest.mark.parametrize(("code", "outcome"), [
    (417, api.Outcome.RETRY),
    (499, api.Outcome.RETRY),
    (503, api.Outcome.THROTTLED),
    (439, api.Outcome.QUOTA),
    (422, api.Outcome.INVALID),
])
def test_an_error_code_is_read_once_as_status_or_in_the_body(
    sandbox: SandboxProcess, code: int, outcome: api.Outcome, mode: str
) -> None:
    """One call, one answer: the call itself neither retries nor stops anything."""
    sandbox.configure(fault_rates={code: 1.0}, fault_mode=mode)
    answer, response, stats = send(sandbox.url, api_request(sandbox.url))
    assert isinstance(answer, Answer)
    assert (answer.code, answer.reason, answer.failure) == (code, str(code), "")
    assert answer.outcome is outcome
    assert response is not None
    assert response.status == (code if mode == "status" else api.SUCCESS_CODE)
    assert stats[stats_keys.answer(code)] == 1
    assert stats[stats_keys.REQUESTS] == 1 == sandbox.stats()["requests"]
    assert stats_keys.answer(api.SUCCESS_CODE) not in stats


@pytest.mark.parametrize(("fault", "reason"), [
    ({"garbage_rate": 1.0}, "not_json"),
    ({"missing_data_rate": 1.0}, "no_data"),
])
def test_a_broken_body_is_named_and_hands_back_no_response(
    sandbox: SandboxProcess, fault: dict[str, Any], reason: str
) -> None:
    sandbox.configure(**fault)
    answer, response, stats = send(sandbox.url, api_request(sandbox.url))
    assert answer == Answer(0, reason, reason)
    assert answer.outcome is api.Outcome.RETRY
    assert response is None
    assert stats[stats_keys.answer(reason)] == 1
    assert stats[stats_keys.REQUESTS] == 1 == sandbox.stats()["requests"]


def test_a_transport_failure_is_named_from_the_fixed_vocabulary() -> None:
    base_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    answer, response, stats = send(base_url, api_request(base_url))
    vocabulary = {"other_error"} | {
        (load_object(c) if isinstance(c, str) else c).__name__
        for c in default_settings.RETRY_EXCEPTIONS
    }
    assert isinstance(answer, Answer)
    assert answer.code == 0
    assert answer.failure in vocabulary
    assert answer.outcome is api.Outcome.RETRY
    assert TOKEN not in answer.message
    assert response is None
    assert stats[stats_keys.answer(answer.failure)] == 1
    assert stats[stats_keys.REQUESTS] == 1


@pytest.mark.parametrize("where", ["other_host", "other_port", "post", "token_given"])
def test_a_request_not_to_the_api_is_refused_before_the_token_leaves(
    sandbox: SandboxProcess, where: str
) -> None:
    with Listener() as listener:
        path = f"{api.PATH}?cat_id=101&page=1"
        request = {
            "other_host": Request(f"http://localhost:{listener.port}{path}"),
            "other_port": Request(f"{listener.url}{path}"),
            "post": Request(f"{sandbox.url}{path}", method="POST", body=b"x"),
            "token_given": Request(f"{sandbox.url}{path}&{api.TOKEN_PARAM}=x"),
        }[where]
        reason, response, stats = send(sandbox.url, request)
    assert reason == FOREIGN_REQUEST
    assert response is None
    assert listener.received == []
    assert sandbox.stats()["requests"] == 0
    assert stats[stats_keys.REQUESTS_REFUSED] == 1
    assert stats[stats_keys.PAGES_FAILED] == 1
    assert stats_keys.REQUESTS not in stats


def test_the_token_an_answer_echoes_is_taken_out_before_it_is_kept() -> None:
    token = "t/k+en ü"

    async def main() -> bytes:
        crawler = crawler_for(project_settings())
        try:
            call = PaidCall(crawler, token)
            quoted = quote(token, safe="")
            assert quoted != token
            return call.without_token(f'{{"a": "{token}", "b": "{quoted}"}}'.encode())
        finally:
            await engine_stopped(crawler)

    kept = asyncio.run(main())
    assert token.encode() not in kept
    assert kept.count(credentials.REDACTED.encode()) == 2
