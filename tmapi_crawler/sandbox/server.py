"""An aiohttp imitation of tmapi's "Get Category Products V2" endpoint, with knobs to misbehave.

It answers like the provider's reference (same parameters, same JSON, same error codes, a result
cap past which pages come back empty) and can inject every failure a crawler must survive:
latency, a per-token concurrency limit, transient faults as HTTP status or in the body, garbage
bodies, a billing quota. It also answers the way public captures show the real API does, each
behaviour a switch: totals capped at the reach, short pages, promoted items repeated across
pages, ids and totals as strings, page sizes clamped, an absurd total, a last page repeated
forever, a price filter ignored, promoted items in fixed slots of every page, prices in three
decimals. Control endpoints under `/_sandbox/` expose counters and the
truth (what a complete crawl must find, in every mode) so tests can check a crawl. The token
is a secret here too: it is only compared, never stored in stats or echoed; accounts are told
apart by a short hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tmapi_crawler import api
from tmapi_crawler.sandbox import misbehaviour
from tmapi_crawler.sandbox.catalog import Catalog, Query, parse_price, withdrawn

FAULT_MODES: Final = ("status", "body", "mixed")
#: How `total_count` is reported: the true number of results, or capped at `result_cap`.
TOTAL_MODES: Final = ("true", "capped")
#: Pages of a `default` listing that show its promoted items first, as public captures do.
PROMOTED_PAGES: Final = frozenset({1, 6, 7, 8, 9, 10})
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
GARBAGE_BODY: Final = "<html>upstream error</html>"
CONTROL_PREFIX: Final = "/_sandbox"
_INTEGER = re.compile(r"[0-9]{1,18}")
_STRING_ID = re.compile(r'^\{"item_id":([0-9]+),')
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


@dataclass(frozen=True, slots=True)
class _Layout:
    """A page's place in a listing: `promoted` items first, then results [start, stop)."""

    promoted: int
    start: int
    stop: int
    has_next: bool


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


def _error_body(code: int, msg: str | None = None, size: int = 0) -> str:
    message = misbehaviour.huge_message(msg or api.ERROR_CODES[code].meaning, size)
    return json.dumps({"code": code, "msg": message, "data": None})


@dataclass
class Stats:
    """Counters since start or the last reset."""

    max_records: int
    requests: int = 0
    answers: Counter[int] = field(default_factory=Counter)  # by the code the client sees
    throttled: int = 0  # 503s from the concurrency limit (as opposed to injected ones)
    garbage: int = 0
    missing_data: int = 0
    pages_served: int = 0  # successful, billed answers
    items_served: int = 0
    peak_in_flight: int = 0  # the most requests of one token in the handler at once
    peak_in_flight_total: int = 0  # the same, all tokens together
    peak_by_token: dict[str, int] = field(default_factory=dict)
    #: Requests whose price_start or price_end had more than two decimals (not whole fen).
    sub_fen_prices: int = 0
    recorded: int = 0
    records: deque[dict[str, Any]] = field(init=False)
    #: When the first request arrived and the last answer left (loop clock, seconds): the
    #: window in which a client used the API, for benchmarks' pages per second.
    first_request_at: float | None = None
    last_answer_at: float | None = None

    def __post_init__(self) -> None:
        self.records = deque(maxlen=self.max_records)


class Sandbox:
    """The state behind one application: settings, catalogue, counters and fault dice."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.catalog = self._catalog()
        self.in_flight: dict[str, int] = {}  # live, so it survives resets
        self._answering = asyncio.Event()  # set unless the configuration says stalled
        self._follow_stall()
        self.reset()

    def _follow_stall(self) -> None:
        if self.config.stalled:
            self._answering.clear()
        else:
            self._answering.set()

    def _catalog(self) -> Catalog:
        config = self.config
        return Catalog(
            seed=config.seed, default_size=config.default_size, sizes=config.sizes,
            overlap=config.overlap, malformed_rate=config.malformed_rate,
            price_point_share=config.price_point_share,
            three_decimal_share=config.three_decimal_share,
        )

    def reset(self) -> None:
        """Zero the counters and quota usage and re-seed the dice, so a test can replay faults."""
        self.stats = Stats(self.config.max_records)
        self._dice = random.Random(f"tmapi-sandbox:{self.config.seed}:faults")
        self._jitter = random.Random(f"tmapi-sandbox:{self.config.seed}:jitter")

    def configure(self, changes: Any) -> None:
        """Apply live changes (a JSON object); the whole configuration is re-validated."""
        if not isinstance(changes, Mapping):
            raise TypeError("expected a JSON object of settings")
        if unknown := set(changes) - RUNTIME_SETTINGS:
            raise ValueError(f"not changeable at runtime: {sorted(unknown)}")
        if "sizes" in changes:
            if not isinstance(changes["sizes"], Mapping):
                raise TypeError("sizes: expected an object of category id -> size")
            resized = {int(cat_id): size for cat_id, size in changes["sizes"].items()}
            changes = {**changes, "sizes": {**self.config.sizes, **resized}}
        previous = self.config
        self.config = dataclasses.replace(previous, **changes)
        if self.config.sizes != previous.sizes:
            # Products are pure functions of their position: a new catalogue keeps every other
            # one (but what category c+1 borrows from a resized c). Building it validates too.
            try:
                self.catalog = self._catalog()
            except ValueError:
                self.config = previous
                raise
        self._follow_stall()

    def _reply(self, record: dict[str, Any], code: int, status: int, body: str, *,
               content_type: str = "application/json", ok: bool = False) -> web.Response:
        """Count and record an answer on its way out; every answer passes through here."""
        stats = self.stats
        stats.answers[code] += 1
        record["code"] = code
        record["ok"] = ok
        stats.records.append(record)
        stats.recorded += 1
        stats.last_answer_at = asyncio.get_running_loop().time()
        if encoding := self.config.compress:
            return web.Response(status=status, content_type=content_type, charset="utf-8",
                                body=misbehaviour.compress(body.encode(), encoding),
                                headers={"Content-Encoding": encoding})
        return web.Response(status=status, text=body, content_type=content_type)

    def _refuse(self, record: dict[str, Any], code: int, msg: str | None = None) -> web.Response:
        return self._reply(record, code, code, _error_body(code, msg, self.config.message_bytes))

    async def handle_items(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        if self.stats.first_request_at is None:
            self.stats.first_request_at = asyncio.get_running_loop().time()
        params = request.query
        token = params.get(api.TOKEN_PARAM, "")
        if not token or (self.config.tokens and token not in self.config.tokens):
            return self._refuse({}, 401)
        try:
            listing: ListingRequest | None = parse_request(params, self._max_page_size())
            record = listing.record()
            if sub_fen(params):
                self.stats.sub_fen_prices += 1
        except ParameterError as error:
            listing, record = None, {"invalid": error.name}
        account = token_fingerprint(token)
        in_flight = self.in_flight[account] = self.in_flight.get(account, 0) + 1
        try:
            return await self._admitted(account, in_flight, listing, record)
        finally:
            # Before aiohttp sends the answer: a client that has it is never counted again.
            self.in_flight[account] -= 1
            if not self.in_flight[account]:
                del self.in_flight[account]

    async def _admitted(self, account: str, in_flight: int, listing: ListingRequest | None,
                        record: dict[str, Any]) -> web.Response:
        """Everything after the token check, while the request counts as in flight."""
        stats, config = self.stats, self.config
        stats.peak_in_flight = max(stats.peak_in_flight, in_flight)
        stats.peak_in_flight_total = max(stats.peak_in_flight_total, sum(self.in_flight.values()))
        stats.peak_by_token[account] = max(stats.peak_by_token.get(account, 0), in_flight)
        if config.concurrency_limit and in_flight > config.concurrency_limit:
            stats.throttled += 1
            return self._refuse(record, 503)
        if self._quota_spent():
            return self._refuse(record, 439)
        if listing is None:
            return self._refuse(record, 422, f"Parameter error: {record['invalid']}")
        # The answer is built first and sent when the latency is up, so that an answer takes
        # the configured latency in total, however long building it took.
        loop = asyncio.get_running_loop()
        due = loop.time() + config.latency + self._jitter.uniform(0, config.latency_jitter)
        answer = self._fault_response(record) or self._page(listing, record)
        if (remaining := due - loop.time()) > 0:
            await asyncio.sleep(remaining)
            stats.last_answer_at = loop.time()
        await self._answering.wait()
        return answer

    def _quota_spent(self) -> bool:
        return bool(self.config.quota) and self.stats.pages_served >= self.config.quota

    def _fault_response(self, record: dict[str, Any]) -> web.Response | None:
        """Roll the dice once; a hit picks one injected failure in proportion to its rate."""
        config = self.config
        roll = self._dice.random()
        for code, rate in sorted(config.fault_rates.items()):
            if roll < rate:
                mode = config.fault_mode
                if mode == "mixed":
                    mode = self._dice.choice(("status", "body"))
                status = code if mode == "status" else api.SUCCESS_CODE
                return self._reply(record, code, status,
                                   _error_body(code, size=self.config.message_bytes))
            roll -= rate
        if roll < config.garbage_rate:
            self.stats.garbage += 1
            return self._reply(record, api.SUCCESS_CODE, api.SUCCESS_CODE, GARBAGE_BODY,
                               content_type="text/html")
        roll -= config.garbage_rate
        if roll < config.missing_data_rate:
            self.stats.missing_data += 1
            body = json.dumps({"code": api.SUCCESS_CODE, "msg": "success"})
            return self._reply(record, api.SUCCESS_CODE, api.SUCCESS_CODE, body)
        return None

    def _page(self, listing: ListingRequest, record: dict[str, Any]) -> web.Response:
        """A successful answer, counted and recorded."""
        body, served = self.listing_body(listing)
        self.stats.pages_served += 1
        self.stats.items_served += served
        if self.config.stall_after and self.stats.pages_served >= self.config.stall_after:
            self._answering.clear()  # this answer too
        return self._reply(record, api.SUCCESS_CODE, api.SUCCESS_CODE, body, ok=True)

    def _max_page_size(self) -> int | None:
        """Page sizes above the maximum get 422, unless they are served clamped instead."""
        return None if self.config.page_size_limit else self.config.max_page_size

    def listing_body(self, listing: ListingRequest) -> tuple[str, int]:
        """The JSON text of a successful answer and how many items it carries.

        Pure (no counters), so a test can ask it for pages without HTTP. Items are pre-encoded,
        so only the envelope is built here.
        """
        config = self.config
        query, epoch = self._applied(listing.query), config.price_epoch
        results = self.catalog.results(query, epoch)
        size = listing.page_size
        if config.page_size_limit:
            size = min(size, config.page_size_limit)
        promoted: Sequence[int] = ()
        if config.promoted_slots:
            promoted = self.catalog.promoted(Query(query.cat_id), epoch, config.promoted_slots)
            layout = _Layout(*misbehaviour.slotted_page(
                listing.page, size, len(results), len(promoted), config.result_cap))
        else:
            if config.promoted and query.sort == api.DEFAULT_SORT:
                promoted = self.catalog.promoted(query, epoch, config.promoted)
            layout = self._layout(listing.page, size, len(results), len(promoted))
        if config.repeat_last_page and results:
            if layout.start == layout.stop:
                last = self._last_page(size, len(results), len(promoted))
                layout = self._layout(last, size, len(results), len(promoted))
            layout = dataclasses.replace(layout, has_next=True)
        positions = [*promoted[:layout.promoted], *results[layout.start:layout.stop]]
        if config.short_page_rate:
            products = self.catalog.products(query.cat_id, epoch)
            positions = [i for i in positions
                         if not withdrawn(products[i], config.short_page_rate)]
        items = self.catalog.items_json(query.cat_id, epoch, listing.language, positions)
        items = self._odd_items(query.cat_id, epoch, positions, items)
        if config.string_values:
            items = [_STRING_ID.sub(r'{"item_id":"\1",', item, count=1) for item in items]
        total = len(results)
        if config.totals == "capped" and config.result_cap:
            total = min(total, config.result_cap)
        total_text = config.claimed_total or (f'"{total}"' if config.string_values else str(total))
        filters = json.dumps(listing.filters, separators=(",", ":"))
        body = (
            f'{{"code":{api.SUCCESS_CODE},"msg":"success","data":{{"page":{listing.page},'
            f'"page_size":{size},"total_count":{total_text},"keyword":"",'
            f'"sort":"{query.sort}","cat_id":{query.cat_id},'
            f'"filters":{filters},"items":[{",".join(items)}],'
            f'"has_next_page":{"true" if layout.has_next else "false"}}}}}'
        )
        return body, len(items)

    def _applied(self, query: Query) -> Query:
        """The query as the sandbox evaluates it: without prices when it ignores them."""
        if self.config.ignore_price_filter:
            return dataclasses.replace(query, price_start=None, price_end=None)
        return query

    def _layout(self, page: int, size: int, results: int, promoted: int) -> _Layout:
        """Which results a page shows: promoted ones first on PROMOTED_PAGES, then the listing
        from where the previous page left off, up to the cap (counted in served slots)."""
        cap = self.config.result_cap
        first = (page - 1) * size
        last = min(page * size, cap) if cap else page * size
        slots = max(0, last - first)
        shown = min(promoted, slots) if page in PROMOTED_PAGES else 0
        start = first - promoted * sum(1 for p in PROMOTED_PAGES if p < page)
        stop = min(start + slots - shown, results)
        if start >= stop:
            return _Layout(0, start, start, False)
        return _Layout(shown, start, stop, stop < results and (not cap or last < cap))

    def _last_page(self, size: int, results: int, promoted: int) -> int:
        """The last page that shows any result."""
        page = max(1, -(-results // size))
        if self.config.result_cap:
            page = min(page, -(-self.config.result_cap // size))
        while self._layout(page, size, results, promoted).has_next:
            page += 1
        while page > 1 and self._layout(page, size, results, promoted).stop == \
                self._layout(page, size, results, promoted).start:
            page -= 1
        return page

    # Misbehaving answers (sandbox/misbehaviour.py).

    def _odd_items(self, cat_id: int, epoch: int, positions: Sequence[int],
                   items: list[str]) -> list[str]:
        """Some products served as odd items, the same ones in every language."""
        config = self.config
        if not config.odd_item_rate:
            return items
        products = self.catalog.products(cat_id, epoch)
        served = list(items)
        for index, position in enumerate(positions):
            kind = misbehaviour.odd_kind(products[position].item_id, config.odd_item_rate,
                                         config.odd_item_kinds)
            if kind is not None:
                served[index] = misbehaviour.odd_item_json(json.loads(items[index]), kind,
                                                           config.huge_item_bytes)
        return served

    def _odd_truth(self, query: Query, epoch: int) -> dict[str, str]:
        """``item_id`` -> odd kind, for every result of the query served odd."""
        config = self.config
        products = self.catalog.products(query.cat_id, epoch)
        return {str(product.item_id): kind
                for product in (products[p] for p in self.catalog.results(query, epoch))
                if (kind := misbehaviour.odd_kind(product.item_id, config.odd_item_rate,
                                                  config.odd_item_kinds)) is not None}

    async def handle_stats(self, request: web.Request) -> web.Response:
        stats, quota = self.stats, self.config.quota
        body: dict[str, Any] = {
            "requests": stats.requests,
            "answers": {str(code): n for code, n in sorted(stats.answers.items())},
            "throttled": stats.throttled,
            "garbage": stats.garbage,
            "missing_data": stats.missing_data,
            "pages_served": stats.pages_served,
            "items_served": stats.items_served,
            "quota_remaining": max(0, quota - stats.pages_served) if quota else None,
            "in_flight": sum(self.in_flight.values()),
            "in_flight_by_token": dict(self.in_flight),
            "peak_in_flight": stats.peak_in_flight,
            "busy_seconds": (stats.last_answer_at - stats.first_request_at
                             if stats.last_answer_at and stats.first_request_at else None),
            "peak_in_flight_total": stats.peak_in_flight_total,
            "peak_in_flight_by_token": dict(stats.peak_by_token),
            "sub_fen_prices": stats.sub_fen_prices,
            "records_dropped": stats.recorded - len(stats.records),
            "config": self.config.public(),
        }
        if request.query.get("records") != "0":
            body["records"] = list(stats.records)
        return web.json_response(body)

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def handle_config(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                self.configure(await request.json())
            except (ValueError, TypeError) as error:
                return web.json_response({"error": str(error)}, status=400)
        return web.json_response(self.config.public())

    async def handle_truth(self, request: web.Request) -> web.Response:
        """What a complete crawl of a query must find: every result ever served, the cap
        ignored; `total` is the true number of results, withdrawn ones included."""
        try:
            listing = parse_request(request.query, self._max_page_size())
        except ParameterError as error:
            return web.Response(status=422, text=_error_body(422, f"Parameter error: {error}"),
                                content_type="application/json")
        applied = self._applied(listing.query)
        truth = self.catalog.truth(applied, self.config.price_epoch, self.config.short_page_rate)
        return web.json_response({**dataclasses.asdict(truth),
                                  "odd_items": self._odd_truth(applied, self.config.price_epoch)})


SANDBOX: Final = web.AppKey("sandbox", Sandbox)


def make_app(config: SandboxConfig | None = None) -> web.Application:
    """The application; run it with `access_log=None`, or the access log would show tokens."""
    sandbox = Sandbox(config or SandboxConfig())
    app = web.Application()
    app[SANDBOX] = sandbox
    app.router.add_get(api.PATH, sandbox.handle_items)
    app.router.add_get(f"{CONTROL_PREFIX}/stats", sandbox.handle_stats)
    app.router.add_post(f"{CONTROL_PREFIX}/reset", sandbox.handle_reset)
    app.router.add_get(f"{CONTROL_PREFIX}/config", sandbox.handle_config)
    app.router.add_post(f"{CONTROL_PREFIX}/config", sandbox.handle_config)
    app.router.add_get(f"{CONTROL_PREFIX}/truth", sandbox.handle_truth)
    return app
