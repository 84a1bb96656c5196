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

Here: counting, faults, latency and the control endpoints. The settings and request validation
are in sandbox/config.py, what a page shows in sandbox/pages.py, the catalogue in
sandbox/catalog.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tmapi_crawler import api
from tmapi_crawler.sandbox import misbehaviour, pages
from tmapi_crawler.sandbox.catalog import Catalog, Query
from tmapi_crawler.sandbox.config import (
    RUNTIME_SETTINGS,
    ListingRequest,
    ParameterError,
    SandboxConfig,
    parse_request,
    sub_fen,
    token_fingerprint,
)

GARBAGE_BODY: Final = "<html>upstream error</html>"
CONTROL_PREFIX: Final = "/_sandbox"


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
        received = asyncio.get_running_loop().time()
        if self.stats.first_request_at is None:
            self.stats.first_request_at = received
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
        record["received_at"] = received
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
        record["answered_at"] = loop.time()
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

        Pure (no counters), so a test can ask it for pages without HTTP.
        """
        return pages.listing_body(self.config, self.catalog, listing)

    def _applied(self, query: Query) -> Query:
        """The query as the sandbox evaluates it: without prices when it ignores them."""
        return pages.applied(self.config, query)

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
            # On the machine's monotonic clock: a benchmark beside it times a client's start-up.
            "first_request_at": stats.first_request_at,
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
                                  "odd_items": pages.odd_truth(self.config, self.catalog, applied,
                                                               self.config.price_epoch)})


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
