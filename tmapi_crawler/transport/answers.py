"""Reading the API's answers: which code they carry and the page inside.

The API may report an error as the HTTP status, as ``code`` in a 200 JSON body, or both;
callers get one code either way and never have to look at the body twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scrapy.http import TextResponse

from tmapi_crawler import api


class BrokenAnswer(ValueError):
    """A success status with a body the crawler cannot use; ``reason`` keys the stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    total_count: int | None
    has_next_page: bool | None


def read_answer(response: TextResponse) -> Answer:
    """The answer's code; for a 200, also check the page is there.

    Decoding goes through ``response.json()``, which Scrapy caches on the response, so the
    spider reading the same response later does not parse it again.
    """
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        if response.status != api.SUCCESS_CODE:
            return Answer(response.status, "")
        raise BrokenAnswer("not_json")
    code = doc.get("code")
    message = str(doc.get("msg") or "")
    if isinstance(code, int) and not isinstance(code, bool) and code != api.SUCCESS_CODE:
        return Answer(code, message)
    if response.status != api.SUCCESS_CODE:
        return Answer(response.status, message)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise BrokenAnswer("no_data")
    if not isinstance(data.get("items"), list):
        raise BrokenAnswer("no_items")
    return Answer(api.SUCCESS_CODE, message)


def read_page(response: TextResponse) -> Page:
    """The page of an answer that ``read_answer`` accepted."""
    data = response.json()["data"]
    total = data.get("total_count")
    has_next = data.get("has_next_page")
    return Page(
        items=data["items"],
        total_count=total if isinstance(total, int) and not isinstance(total, bool) else None,
        has_next_page=has_next if isinstance(has_next, bool) else None,
    )
