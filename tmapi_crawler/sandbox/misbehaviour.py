"""Answers a careless or hostile server sends: compressed bodies nobody asked for, huge
messages, and odd items that parse as JSON but hold what MongoDB or normalisation must refuse.

Each odd item is a pure function of its product's ``item_id`` (BLAKE2, not ``hash()``), so every
process and every language agree on which products are odd and how; ``/_sandbox/truth`` says.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from typing import Any, Final

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

#: ``Content-Encoding`` values the sandbox can send (what Scrapy decodes).
COMPRESSIONS: Final = ("gzip", "deflate", "br", "zstd")

#: Odd items, each a way a listing item can break a crawler that trusts it.
ODD_KINDS: Final = (
    "title_type",  # title is a number
    "company_type",  # shop_info.company_name is an object
    "area_type",  # delivery_info.area_from is a string, not a list
    "big_int",  # an integer of 2^64 in a field nobody reads (MongoDB stops at 2^63 - 1)
    "huge_id",  # item_id is 10^20: no readable identity
    "nul_key",  # a key holding a NUL byte (MongoDB refuses it)
    "dollar_key",  # a key starting with "$" (MongoDB 5.0+ stores it)
    "dot_key",  # a key holding "." (MongoDB 5.0+ stores it)
    "surrogate",  # a title that is not valid Unicode (a lone surrogate)
    "deep",  # nested 200 levels deep (MongoDB refuses more than about 180)
    "huge",  # HUGE_ITEM_BYTES of description (a product document stops at 16 MB)
)
#: The kinds a crawler can store as received; the others must be rejected.
STORABLE_KINDS: Final = frozenset({"dollar_key", "dot_key"})
#: The kinds that leave an item without a readable ``item_id``.
ANONYMOUS_KINDS: Final = frozenset({"huge_id"})
#: Default size of a "huge" item: past MongoDB's 16 MB document limit.
HUGE_ITEM_BYTES: Final = 17 * 2**20
_DEPTH: Final = 200
#: The sandbox settings of this module, all changeable at runtime.
SETTINGS: Final = frozenset(
    {"compress", "message_bytes", "odd_item_rate", "odd_item_kinds", "huge_item_bytes",
     "promoted_slots"}
)


def check(compress: str, message_bytes: int, odd_item_rate: float,
          odd_item_kinds: tuple[str, ...], huge_item_bytes: int, *,
          promoted_slots: int = 0) -> None:
    """Validate this module's settings; raises ValueError naming the bad one."""
    if promoted_slots < 0:
        raise ValueError("promoted_slots must be ≥ 0")
    if compress and compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {COMPRESSIONS} (or empty)")
    if message_bytes < 0 or huge_item_bytes < 0:
        raise ValueError("message_bytes and huge_item_bytes must be ≥ 0")
    if not 0 <= odd_item_rate <= 1:
        raise ValueError("odd_item_rate must be a fraction between 0 and 1")
    if unknown := set(odd_item_kinds) - set(ODD_KINDS):
        raise ValueError(f"odd_item_kinds must be among {ODD_KINDS}, not {sorted(unknown)}")


def slotted_page(page: int, size: int, results: int, slots: int,
                 cap: int) -> tuple[int, int, int, bool]:
    """A page of a listing whose first ``slots`` places show the category's promoted items
    on every page (ads: whatever the sort and filters): how many of them it shows, the
    listing results [start, stop) after them, and whether a next page follows.

    Each page carries ``size - slots`` results (at least one), so the listing runs past
    ``total_count / page_size`` pages; ``cap`` (0: none) counts results, not slots. A page
    past the listing's end is empty.
    """
    per_page = max(1, size - slots)
    start = (page - 1) * per_page
    end = min(results, cap) if cap else results
    stop = min(start + per_page, end)
    if start >= stop:
        return 0, start, start, False
    return size - per_page, start, stop, stop < end


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return bytes(brotli.compress(body))
    if encoding == "zstd":
        return bytes(zstd.compress(body))
    raise ValueError(f"compress must be one of {COMPRESSIONS}, not {encoding!r}")


def huge_message(message: str, size: int) -> str:
    """``message`` padded to ``size`` characters, as a verbose server might explain itself."""
    return message if len(message) >= size else message + " " + "x" * (size - len(message) - 1)


def odd_kind(item_id: int, rate: float, kinds: tuple[str, ...]) -> str | None:
    """Which odd kind a product is served as, if any (language-independent)."""
    if not rate or not kinds:
        return None
    digest = hashlib.blake2b(b"tmapi-sandbox:odd:%d" % item_id, digest_size=8).digest()
    if int.from_bytes(digest[:6]) / 2**48 >= rate:
        return None
    return kinds[digest[6] % len(kinds)]


def odd_item_json(item: dict[str, Any], kind: str, huge_bytes: int) -> str:
    """The item made odd, encoded as the API would send it."""
    odd = dict(item)
    if kind == "title_type":
        odd["title"] = 12345
    elif kind == "company_type":
        odd["shop_info"] = {**(odd.get("shop_info") or {}), "company_name": {"zh": "某公司"}}
    elif kind == "area_type":
        odd["delivery_info"] = {**(odd.get("delivery_info") or {}), "area_from": "Zhejiang"}
    elif kind == "big_int":
        odd["sale_info"] = {**(odd.get("sale_info") or {}), "orders_total": 2**64}
    elif kind == "huge_id":
        odd["item_id"] = 10**20
    elif kind == "nul_key":
        odd["note\u0000"] = "x"
    elif kind == "dollar_key":
        odd["$where"] = "1"
    elif kind == "dot_key":
        odd["price.cny"] = odd.get("price", "")
    elif kind == "surrogate":
        odd["title"] = "broken \ud800 title"
    elif kind == "deep":
        nested: dict[str, Any] = {}
        odd["extra"] = nested
        for _ in range(_DEPTH):
            nested["x"] = {}
            nested = nested["x"]
    elif kind == "huge":
        odd["description"] = "x" * huge_bytes
    else:
        raise ValueError(f"odd item kinds are {ODD_KINDS}, not {kind!r}")
    # ensure_ascii: a lone surrogate and a NUL travel as \ud800 and \u0000 escapes.
    return json.dumps(odd, ensure_ascii=True, separators=(",", ":"))
