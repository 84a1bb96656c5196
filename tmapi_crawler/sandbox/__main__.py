"""Run the sandbox: `python -m tmapi_crawler.sandbox --port 8099 [options]`.

Prints exactly one line, `sandbox listening on http://HOST:PORT`, once it accepts connections
(`--port 0` picks a free port), so a parent process can wait for that instead of guessing; runs
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web

from tmapi_crawler.sandbox import misbehaviour
from tmapi_crawler.sandbox.config import FAULT_MODES, TOTAL_MODES, SandboxConfig
from tmapi_crawler.sandbox.server import make_app

READY_PREFIX = "sandbox listening on "
K = TypeVar("K")
V = TypeVar("V")


def _pair(key: Callable[[str], K], value: Callable[[str], V]) -> Callable[[str], tuple[K, V]]:
    def parse(text: str) -> tuple[K, V]:
        left, sep, right = text.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
        try:
            return key(left), value(right)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Every option with its help and (shown by ``--help``) its default."""
    parser = argparse.ArgumentParser(
        prog="python -m tmapi_crawler.sandbox",
        description="A local stand-in for tmapi's Get Category Products V2 API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8099, help="port to listen on; 0 picks a free port")
    add("--token", action="append", default=[],
        help="accepted token (repeatable); none given: any non-empty token")
    add("--latency", type=float, default=0.0, help="seconds per answer")
    add("--latency-jitter", type=float, default=0.0, help="extra uniform 0..S seconds")
    add("--concurrency-limit", type=int, default=0,
        help="in-flight requests per token before 503; 0: none")
    add("--fault", action="append", default=[], type=_pair(int, float), metavar="CODE=RATE",
        help="inject answer CODE with probability RATE (repeatable), e.g. 417=0.05")
    add("--fault-mode", choices=FAULT_MODES, default="mixed",
        help="faults as HTTP status, as a 200 with the code in the body, or either")
    add("--garbage-rate", type=float, default=0.0, help="share of 200 answers that are not JSON")
    add("--missing-data-rate", type=float, default=0.0, help="share of 200 answers without data")
    add("--quota", type=int, default=0, help="successful answers before 439; 0: unlimited")
    add("--result-cap", type=int, default=2000,
        help="results reachable by paging a query; 0: all")
    add("--default-size", type=int, default=240, help="products per category")
    add("--size", action="append", default=[], type=_pair(int, int), metavar="CAT=N",
        help="products in category CAT (repeatable)")
    add("--overlap", type=float, default=0.1, help="share of category c's products also in c+1")
    add("--malformed-rate", type=float, default=0.0,
        help="share of items without an id or with a bad price")
    add("--price-point-share", type=float, default=0.0,
        help="share of products all costing 9.90, e.g. more than the result cap reaches")
    add("--three-decimal-share", type=float, default=0.0,
        help="share of products priced in three decimals (x.xx5, as the real API sometimes "
             "answers 9.995); filters compare them exactly")
    add("--price-epoch", type=int, default=0,
        help="price generation: each one moves about a fifth of the prices")
    add("--seed", type=int, default=0, help="seed of the catalogue and the fault dice")
    add("--max-page-size", type=int, default=100,
        help="largest page_size accepted; larger ones get 422 (unless --page-size-limit)")
    real = parser.add_argument_group("how the real API answers (defaults: as its reference)")
    add = real.add_argument
    add("--totals", choices=TOTAL_MODES, default="true",
        help="total_count is the true number of results, or capped at --result-cap as the "
             "real API's are")
    add("--short-page-rate", type=float, default=0.0,
        help="share of products counted in totals but never served: pages of 18 or 19 of 20")
    add("--promoted", type=int, default=0,
        help="best sellers shown first again on pages 1 and 6-10 of default listings")
    add("--string-values", action="store_true",
        help="item_id and total_count as strings")
    add("--page-size-limit", type=int, default=0,
        help="serve at most N items per page and say so in data.page_size (instead of 422); "
             "0: off")
    add("--claimed-total", default="",
        help="a JSON value every answer claims as total_count, e.g. 1e12, -5 or '\"many\"'")
    add("--repeat-last-page", action="store_true",
        help="past the end, serve the last page again with has_next_page true, forever")
    add("--ignore-price-filter", action="store_true",
        help="echo price_start/price_end but do not apply them")
    bad = parser.add_argument_group("misbehaving answers (sandbox/misbehaviour.py)")
    add = bad.add_argument
    add("--compress", choices=misbehaviour.COMPRESSIONS, default="",
        help="encode every API answer so, even when the client asks for identity")
    add("--message-bytes", type=int, default=0,
        help="error answers carry a `msg` of this many characters")
    add("--odd-item-rate", type=float, default=0.0,
        help="share of products served as odd items: wrong types, 2^64, NUL/$/. in keys, "
             "invalid Unicode, deep nesting, huge")
    add("--odd-item-kind", action="append", default=[], choices=misbehaviour.ODD_KINDS,
        help="only these odd kinds (repeatable; default: all)")
    add("--huge-item-bytes", type=int, default=misbehaviour.HUGE_ITEM_BYTES,
        help="extra text of the 'huge' odd item")
    add("--promoted-slots", type=int, default=0, metavar="K",
        help="the category's K best sellers in the first K places of every page of every "
             "listing of it, sorted and price-filtered ones too (ads); total_count counts "
             "the listing, has_next_page goes on past total_count / page_size")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        tokens=frozenset(args.token), latency=args.latency, latency_jitter=args.latency_jitter,
        concurrency_limit=args.concurrency_limit, fault_rates=dict(args.fault),
        fault_mode=args.fault_mode, garbage_rate=args.garbage_rate,
        missing_data_rate=args.missing_data_rate, quota=args.quota, result_cap=args.result_cap,
        max_page_size=args.max_page_size, price_epoch=args.price_epoch, seed=args.seed,
        default_size=args.default_size, sizes=dict(args.size), overlap=args.overlap,
        malformed_rate=args.malformed_rate, price_point_share=args.price_point_share,
        totals=args.totals, short_page_rate=args.short_page_rate, promoted=args.promoted,
        string_values=args.string_values, page_size_limit=args.page_size_limit,
        claimed_total=args.claimed_total, repeat_last_page=args.repeat_last_page,
        ignore_price_filter=args.ignore_price_filter,
        compress=args.compress, message_bytes=args.message_bytes,
        odd_item_rate=args.odd_item_rate,
        odd_item_kinds=tuple(args.odd_item_kind) or misbehaviour.ODD_KINDS,
        huge_item_bytes=args.huge_item_bytes, promoted_slots=args.promoted_slots,
        three_decimal_share=args.three_decimal_share,
    )


async def serve(app: web.Application, host: str, port: int) -> None:
    # No access log: it would print request URLs, and they carry the token.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        print(f"{READY_PREFIX}http://{shown_host}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        app = make_app(config_from(args))
    except ValueError as error:
        raise SystemExit(f"sandbox: {error}") from None
    asyncio.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
