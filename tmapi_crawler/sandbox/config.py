"""The sandbox's settings and the validation of an API request, as the real API validates it.

Apart from the server so the command line, tests and the page builder can share them without
the aiohttp application.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tmapi_crawler import api
from tmapi_crawler.sandbox import misbehaviour
from tmapi_crawler.sandbox.catalog import Query, parse_price

FAULT_MODES: Final = ("status", "body", "mixed")
#: How `total_count` is reported: the true number of results, or capped at `result_cap`.
TOTAL_MODES: Final = ("true", "capped")
#: Settings `POST /_sandbox/config` may change; the others shape the catalogue or the accounts.
#: `sizes` is merged into the current sizes (`{"201": 50}` resizes category 201 only): the
#: category loses or gains products at its end, as listings do between crawls.
RUNTIME_SETTINGS: Final = frozenset({
    "price_epoch", "fault_rates", "fault_mode", "garbage_rate", "missing_data_rate", "quota",
    "latency", "latency_jitter", "concurrency_limit", "result_cap", "max_page_size", "sizes",
    # How the real API answers (see SandboxConfig).
    "totals", "short_page_rate", "promoted", "string_values", "page_size_limit", "claimed_total",
    "repeat_last_page", "ignore_price_filter", "stalled", "stall_after",
}) | misbehaviour.SETTINGS
_INTEGER = re.compile(r"[0-9]{1,18}")
_BOOLEANS: Final = {"true": True, "false": False}


def token_fingerprint(token: str) -> str:
    """How stats name an account: enough to tell tokens apart, useless to call the API with."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class SandboxConfig:
    """Everything that shapes the sandbox's behaviour; see `RUNTIME_SETTINGS` for live changes."""

    tokens: frozenset[str] = frozenset()  # empty: any non-empty token is accepted
    latency: float = 0.0
    latency_jitter: float = 0.0
    concurrency_limit: int = 0  # in-flight requests per token; 0: unlimited
    fault_rates: dict[int, float] = field(default_factory=dict)  # answer code -> probability
    fault_mode: str = "mixed"
    garbage_rate: float = 0.0
    missing_data_rate: float = 0.0
    quota: int = 0  # successful answers before 439; 0: unlimited
    result_cap: int = 2000  # results reachable by paging; 0: all
    max_page_size: int = 100
    price_epoch: int = 0
    seed: int = 0
    default_size: int = 240
    sizes: dict[int, int] = field(default_factory=dict)
    overlap: float = 0.1
    malformed_rate: float = 0.0
    price_point_share: float = 0.0  # products all at one price (catalog.PRICE_POINT_CENTS)
    max_records: int = 100_000  # request records kept for /_sandbox/stats
    # How the real API answers; the defaults answer like the provider's reference.
    totals: str = "true"  # TOTAL_MODES: "capped" reports at most result_cap, as the real API
    short_page_rate: float = 0.0  # products counted in totals but never served: short pages
    promoted: int = 0  # best sellers shown first on PROMOTED_PAGES of `default` listings
    string_values: bool = False  # item_id and total_count as strings
    page_size_limit: int = 0  # serve at most this many per page, said in data.page_size; 0: off
    claimed_total: str = ""  # a JSON value every answer claims as total_count, e.g. 1e12
    repeat_last_page: bool = False  # past the end, the last page again, has_next_page true
    ignore_price_filter: bool = False  # price_start/price_end echoed but not applied
    # Answers wait, their latency up, until it is false again: an API that stops answering for
    # a while, and how a test freezes a crawl at a known point (every call in flight).
    stalled: bool = False
    # Once this many pages were served since the last reset (0: off), answers wait as `stalled`
    # makes them, until `stalled` and this are both off: a crawl frozen mid-way at a known
    # point, however fast the machine lets it run.
    stall_after: int = 0
    # Misbehaving answers (sandbox/misbehaviour.py).
    compress: str = ""  # Content-Encoding of every API answer, whatever the client accepts
    message_bytes: int = 0  # error answers carry a `msg` of this many characters
    odd_item_rate: float = 0.0  # share of products served as odd items
    odd_item_kinds: tuple[str, ...] = misbehaviour.ODD_KINDS
    huge_item_bytes: int = misbehaviour.HUGE_ITEM_BYTES  # the "huge" odd item's extra text
    #: The category's best sellers in the first K places of every page of every listing of
    #: it, sorted and filtered ones too (ads); ``total_count`` counts the listing only.
    promoted_slots: int = 0
    #: Products priced in three decimals (x.xx5), as the real API sometimes answers (9.995);
    #: filters compare them exactly. Shapes the catalogue: not changeable at runtime.
    three_decimal_share: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = frozenset(self.tokens)
        self.fault_rates = {int(code): float(rate) for code, rate in self.fault_rates.items()}
        self.sizes = {int(cat_id): int(size) for cat_id, size in self.sizes.items()}
        if unknown := set(self.fault_rates) - set(api.ERROR_CODES):
            raise ValueError(f"fault codes must be API error codes, not {sorted(unknown)}")
        rates = [*self.fault_rates.values(), self.garbage_rate, self.missing_data_rate]
        if any(not 0 <= rate <= 1 for rate in rates) or sum(rates) > 1:
            raise ValueError("fault, garbage and missing-data rates must be fractions summing ≤ 1")
        if self.fault_mode not in FAULT_MODES:
            raise ValueError(f"fault_mode must be one of {FAULT_MODES}")
        counts = (self.concurrency_limit, self.quota, self.result_cap, self.price_epoch,
                  self.max_records)
        if self.latency < 0 or self.latency_jitter < 0 or min(counts) < 0:
            raise ValueError("latencies, limits, quota, cap, epoch and records must be ≥ 0")
        if self.max_page_size < 1:
            raise ValueError("max_page_size must be ≥ 1")
        if self.totals not in TOTAL_MODES:
            raise ValueError(f"totals must be one of {TOTAL_MODES}")
        if not 0 <= self.short_page_rate <= 1:
            raise ValueError("short_page_rate must be a fraction between 0 and 1")
        if self.promoted < 0 or self.page_size_limit < 0:
            raise ValueError("promoted and page_size_limit must be ≥ 0")
        if self.claimed_total:
            try:
                json.loads(self.claimed_total)
            except ValueError:
                raise ValueError("claimed_total must be a JSON value, e.g. 1e12 or "
                                 '"2465"') from None
        self.odd_item_kinds = tuple(self.odd_item_kinds)
        misbehaviour.check(self.compress, self.message_bytes, self.odd_item_rate,
                           self.odd_item_kinds, self.huge_item_bytes,
                           promoted_slots=self.promoted_slots)

    def public(self) -> dict[str, Any]:
        """The settings as JSON, tokens reduced to their number."""
        settings = dataclasses.asdict(self)
        settings["tokens"] = len(self.tokens)
        settings["fault_rates"] = {str(code): rate for code, rate in self.fault_rates.items()}
        settings["sizes"] = {str(cat): size for cat, size in self.sizes.items()}
        return settings


class ParameterError(ValueError):
    """A query parameter the real API would answer 422 to."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class ListingRequest:
    """One validated API request (the token aside)."""

    query: Query
    language: str
    page: int
    page_size: int
    filters: dict[str, str | bool]  # the given filters, as the answer echoes them

    def record(self) -> dict[str, Any]:
        return {
            "cat_id": self.query.cat_id, "language": self.language, "sort": self.query.sort,
            "page": self.page, "page_size": self.page_size, **self.filters,
        }


def _integer(params: Mapping[str, str], name: str, default: int | None, low: int,
             high: int | None = None) -> int:
    text = params.get(name, "")
    if not text:
        if default is None:
            raise ParameterError(name)
        return default
    if not _INTEGER.fullmatch(text) or int(text) < low or (high is not None and int(text) > high):
        raise ParameterError(name)
    return int(text)


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name) or default
    if value not in allowed:
        raise ParameterError(name)
    return value


def parse_request(params: Mapping[str, str], max_page_size: int | None) -> ListingRequest:
    """Validate like the real API; empty optional parameters count as absent (as in its examples).

    ``max_page_size`` None: any page size is taken (and served clamped, see `page_size_limit`).

    Raises ParameterError naming the first offending parameter.
    """
    cat_id = _integer(params, "cat_id", None, 1)
    language = _choice(params, "language", api.LANGUAGES, api.DEFAULT_LANGUAGE)
    sort = _choice(params, "sort", api.SORTS, api.DEFAULT_SORT)
    page = _integer(params, "page", 1, 1)
    page_size = _integer(params, "page_size", api.DEFAULT_PAGE_SIZE, 1, max_page_size)
    filters: dict[str, str | bool] = {}
    prices = {}
    for name in api.PRICE_FILTERS:
        if text := params.get(name, ""):
            try:
                prices[name] = parse_price(text)
            except ValueError:
                raise ParameterError(name) from None
            filters[name] = text
    flags = {}
    for name in api.FLAG_FILTERS:
        if text := params.get(name, ""):
            if text not in _BOOLEANS:
                raise ParameterError(name)
            filters[name] = flags[name] = _BOOLEANS[text]
    return ListingRequest(Query(cat_id, sort, **prices, **flags), language, page, page_size,
                          filters)


def sub_fen(params: Mapping[str, str]) -> bool:
    """Whether a price filter has more than two decimals: no price the API lists is cut so."""
    return any(len(params.get(name, "").partition(".")[2]) > 2 for name in api.PRICE_FILTERS)
