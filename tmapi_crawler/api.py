"""The tmapi "Get Category Products V2" API: the one place that knows its shape.

Everything else — argument validation, URL building, the sandbox, the transport rules — reads
the parameters, allowed values and error semantics from here, so a change in the provider's
reference is a change in this file only.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Final

DEFAULT_BASE_URL: Final = "http://api.tmapi.top"
PATH: Final = "/1688/category/items/v2"
TOKEN_PARAM: Final = "apiToken"

LANGUAGES: Final = ("en", "zh", "ru", "vi", "ja", "ko")
SORTS: Final = ("default", "sales", "price_up", "price_down")
#: The sorts that order results by price: 1 cheapest first, -1 dearest first.
PRICE_SORTS: Final = {"price_up": 1, "price_down": -1}
DEFAULT_LANGUAGE: Final = "en"
DEFAULT_SORT: Final = "default"
DEFAULT_PAGE_SIZE: Final = 20
#: The provider asks clients to wait this long before giving up (answer 499).
MIN_TIMEOUT_SECONDS: Final = 60.0

#: Boolean filters, in the order they appear in request URLs.
FLAG_FILTERS: Final = ("new_arrival", "support_dropshipping", "free_shipping", "is_super_factory")
#: Price-range filters; the API takes them as strings, and both bounds are inclusive.
PRICE_FILTERS: Final = ("price_start", "price_end")
#: Prices are CNY with two decimals (fen), as the reference's example shows ("0.60"): the step
#: between neighbouring prices, so a price range can be cut with neither overlap nor gap.
PRICE_STEP: Final = Decimal("0.01")
#: Query-string order of every parameter except the token.
PARAMETER_ORDER: Final = (
    "cat_id", "language", "page", "page_size", "sort", *PRICE_FILTERS, *FLAG_FILTERS
)


class Outcome(Enum):
    """What a client should do with an answer."""

    OK = "ok"
    RETRY = "retry"  # transient: try again later, with backoff
    THROTTLED = "throttled"  # the account's concurrency limit: retry and slow down
    INVALID = "invalid"  # the query itself is wrong: never retry
    QUOTA = "quota"  # subscription expired or balance exhausted: stop everything
    UNAUTHORIZED = "unauthorized"  # the token is wrong: stop everything


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: int
    outcome: Outcome
    meaning: str


ERROR_CODES: Final = {
    e.code: e
    for e in (
        ErrorCode(417, Outcome.RETRY, "failed to retrieve data, try again"),
        ErrorCode(422, Outcome.INVALID, "parameter error"),
        ErrorCode(439, Outcome.QUOTA, "subscription expired or insufficient balance"),
        ErrorCode(499, Outcome.RETRY, "try again, with a request timeout of 60 s"),
        ErrorCode(500, Outcome.RETRY, "unexpected error"),
        ErrorCode(503, Outcome.THROTTLED, "API request concurrency limit exceeded"),
        # Not in the provider's reference, but what any HTTP API answers to a bad token;
        # retrying cannot help, so they stop the crawl like 439 does.
        ErrorCode(401, Outcome.UNAUTHORIZED, "missing or invalid apiToken"),
        ErrorCode(403, Outcome.UNAUTHORIZED, "apiToken not allowed"),
    )
}
SUCCESS_CODE: Final = 200


def outcome_of(code: int) -> Outcome:
    """Classify an answer code; codes the reference does not list are transient."""
    if code == SUCCESS_CODE:
        return Outcome.OK
    known = ERROR_CODES.get(code)
    return known.outcome if known else Outcome.RETRY


def format_bool(value: bool) -> str:
    """How the API spells a boolean in a query string."""
    return "true" if value else "false"
