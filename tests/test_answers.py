"""The API's answers decoded by orjson (transport.answers.ApiResponse) read exactly as the
standard library reads them: the same value, or the same refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from scrapy.http import JsonResponse

from tmapi_crawler.transport.answers import ApiResponse

BODIES = {
    "a page": b'{"code": 200, "data": {"items": [{"item_id": 1, "price": "2.50"}]}}',
    "an integer past 64 bits": b'{"item_id": 123456789012345678901234567890}',
    "the largest unsigned 64 bits": b'{"item_id": 18446744073709551615}',
    "one past the largest unsigned 64 bits": b'{"item_id": 18446744073709551616}',
    "below the smallest signed 64 bits": b'{"item_id": -9223372036854775809}',
    "a float of many digits": b'{"price": 2.50000000000000000000001}',
    "NaN": b'{"price": NaN}',
    "a float past the double range": b'{"price": 1e400}',
    "a key twice": b'{"a": 1, "a": 2}',
    "a byte-order mark": b'\xef\xbb\xbf{"a": 1}',
    "UTF-16": '{"title": "\u6d4b\u8bd5"}'.encode("utf-16"),
    "not UTF-8": b'{"title": "\xff\xfe"}',
    "a lone surrogate": b'{"title": "\\ud800"}',
    "nesting past any limit": b"[" * 5000 + b"]" * 5000,
    "not JSON": b"<html>busy</html>",
}


def _read(json: Callable[[], Any]) -> list[tuple[str, str]]:
    """What each of two reads gives: a refusal is a refusal every time."""
    reads = []
    for _ in range(2):
        try:
            reads.append(("value", repr(json())))
        except Exception as exc:  # the refusal itself is what is compared
            reads.append(("refused", type(exc).__name__))
    return reads


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_an_answer_reads_as_the_standard_library_reads_it(body: bytes) -> None:
    ours = ApiResponse("http://api.test/page", body=body)
    theirs = JsonResponse("http://api.test/page", body=body)
    assert _read(ours.json) == _read(theirs.json)


def test_an_answer_is_decoded_once() -> None:
    response = ApiResponse("http://api.test/page", body=BODIES["a page"])
    assert response.json() is response.json()
    assert response.replace(url="http://api.test/other").json() == response.json()
