"""Reading the API's answers: which code they carry and the page inside.

The API may report an error as the HTTP status, as ``code`` in a 200 JSON body, or both;
callers get one code either way and never have to look at the body twice.

Everything that names an answer or a failure in stats keys and log lines comes from a bounded
vocabulary defined here: an API code, one of the broken-answer reasons, or the name of a
transport failure from a fixed list of classes. Text quoted from an answer or an exception is
cut to ``quoting.MESSAGE_CHARS``: a 1 MB ``msg`` is not logged a million characters at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from scrapy.http import JsonResponse, TextResponse

from tmapi_crawler import api
from tmapi_crawler.quoting import MESSAGE_CHARS, shown

# Why a success status carried no usable page (stats: ``answers/<reason>``).
NOT_JSON: Final = "not_json"
NO_DATA: Final = "no_data"
NO_ITEMS: Final = "no_items"
#: Larger than DOWNLOAD_MAXSIZE once decompressed (a decompression bomb).
TOO_LARGE: Final = "too_large"
#: A ``Content-Encoding`` the body does not decode as.
BAD_ENCODING: Final = "bad_encoding"
#: A transport failure that is none of the known classes.
OTHER_ERROR: Final = "other_error"


class BrokenAnswer(ValueError):
    """A success status with a body the crawler cannot use; ``reason`` keys the stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """What one call got back: an API code, or (code 0) a ``failure`` from the vocabulary."""

    code: int
    #: The answer's ``msg`` or a failure's text, already cut to ``MESSAGE_CHARS``.
    message: str
    failure: str = ""

    @property
    def reason(self) -> str:
        """How stats keys and retry reasons name this answer."""
        return self.failure or str(self.code)

    @property
    def outcome(self) -> api.Outcome:
        """What the crawler does with it (a failure, code 0, is retried)."""
        return api.outcome_of(self.code)


#: Every digit made a 0, so that a run of them is one ``in`` away (a regular expression took
#: four times orjson's time on a page).
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
#: Digits enough for an integer orjson would not read as the standard library does.
_LONG_NUMBER: Final = b"0" * 19
_REFUSED: Final = object()


def _fast(body: bytes) -> Any:
    """The body as orjson reads it, or ``_REFUSED`` where it would differ (``ApiResponse``)."""
    if _LONG_NUMBER in body.translate(_DIGITS_AS_ZERO):
        return _REFUSED
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _REFUSED


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    total_count: int | None
    has_next_page: bool | None


def failure_name(error: BaseException, known: Iterable[type[BaseException]]) -> str:
    """A transport failure's name in stats and retry reasons: the first of ``known`` (Scrapy's
    ``RETRY_EXCEPTIONS``) it is an instance of, else ``other_error``."""
    for cls in known:
        if isinstance(error, cls):
            return cls.__name__
    return OTHER_ERROR


class ApiResponse(JsonResponse):
    """An answer of the API, decoded by orjson: a 17 KB page in a third of the standard
    library's time (BENCHMARKS.md, B3). Whatever orjson refuses (NaN, a body in UTF-16,
    nesting past its limit) or would read otherwise (an integer past 64 bits it makes a
    float; any 19 digits in a row might be one) the standard library decodes, or refuses, as
    before: every answer reads exactly as it did."""

    __slots__ = ("_decoded",)

    def json(self) -> Any:
        try:
            return self._decoded
        except AttributeError:
            pass
        decoded = _fast(self.body)
        if decoded is _REFUSED:
            decoded = super().json()  # a refusal raises here, every time it is asked
        self._decoded = decoded
        return decoded


def read_answer(response: TextResponse) -> Answer:
    """The answer's code; for a 200, also check the page is there.

    Decoding goes through ``response.json()``, which Scrapy caches on the response, so the
    spider reading the same response later does not parse it again.
    """
    try:
        doc = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
        doc = None
    if not isinstance(doc, dict):
        if response.status != api.SUCCESS_CODE:
            return Answer(response.status, "")
        raise BrokenAnswer(NOT_JSON)
    code = doc.get("code")
    message = doc.get("msg")
    message = shown(message if isinstance(message, str) else str(message or "")[:MESSAGE_CHARS])
    # Only a three-digit code is one: anything else cannot grow the stats' vocabulary.
    if type(code) is int and 100 <= code <= 999 and code != api.SUCCESS_CODE:
        return Answer(code, message)
    if response.status != api.SUCCESS_CODE:
        return Answer(response.status, message)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise BrokenAnswer(NO_DATA)
    if not isinstance(data.get("items"), list):
        raise BrokenAnswer(NO_ITEMS)
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
