"""A deterministic synthetic 1688 catalogue for the sandbox.

Every product is a pure function of (seed, origin category, position), hashed with BLAKE2 and
never with Python's per-process `hash()`, so every process builds the same catalogue and a test
can compare what a crawler stored with the truth. Nothing here does I/O; everything expensive is
built lazily and cached, because benchmarks page through categories of 50,000+ products.
A product's item JSON is written in sandbox/items.py, from the word tables of sandbox/words.py.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Any

from tmapi_crawler import api
from tmapi_crawler.sandbox.items import (
    BAD_PRICE,
    MISSING_ITEM_ID,
    Product,
    build_item,
    item_json,
)

#: Item ids are an affine permutation modulo this prime, so they are unique 12-digit numbers.
_ID_PRIME = 899_999_999_981
_ID_BASE = 100_000_000_000
_MAX_SIZE = 1 << 20
_EPOCH_CHANGE_THRESHOLD = 51  # of 256: ~20 % of products change price at each epoch
_EPOCHS_PER_DIGEST = 16
#: The one price (9.90 CNY) that `price_point_share` of the products cost.
PRICE_POINT_CENTS = 990
#: Withdrawn products are drawn from the item id modulo this prime (see `withdrawn`).
_WITHDRAWN_MODULUS = 9973


_PRICE_TEXT = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def parse_price(value: str | float | Decimal | None) -> Decimal | None:
    """A price filter as an exact decimal; only plain non-negative numbers ("12", "0.5") pass."""
    if value is None:
        return None
    text = str(value)
    if not _PRICE_TEXT.fullmatch(text):
        raise ValueError(f"not a price: {value!r}")
    return Decimal(text)


@dataclass(frozen=True, slots=True)
class Query:
    """One listing request minus paging and language (which do not change what matches).

    Hashable, so evaluated queries can be cached.
    """

    cat_id: int
    sort: str = api.DEFAULT_SORT
    price_start: Decimal | None = None
    price_end: Decimal | None = None
    new_arrival: bool | None = None
    support_dropshipping: bool | None = None
    free_shipping: bool | None = None
    is_super_factory: bool | None = None

    @classmethod
    def of(
        cls,
        cat_id: int,
        sort: str = api.DEFAULT_SORT,
        *,
        price_start: str | float | Decimal | None = None,
        price_end: str | float | Decimal | None = None,
        new_arrival: bool | None = None,
        support_dropshipping: bool | None = None,
        free_shipping: bool | None = None,
        is_super_factory: bool | None = None,
    ) -> Query:
        """Build a query from loosely typed values (prices as str or number), validating them."""
        if sort not in api.SORTS:
            raise ValueError(f"unknown sort {sort!r}")
        return cls(
            cat_id, sort, parse_price(price_start), parse_price(price_end),
            new_arrival, support_dropshipping, free_shipping, is_super_factory,
        )

    def price_bounds(self, scale: int = 100) -> tuple[int | None, int | None]:
        """The price range in whole cents (or 1/``scale`` yuan), inclusive at both ends."""
        low = None if self.price_start is None else int(
            (self.price_start * scale).to_integral_value(ROUND_CEILING))
        high = None if self.price_end is None else int(
            (self.price_end * scale).to_integral_value(ROUND_FLOOR))
        return low, high

    def flags(self) -> list[tuple[str, bool]]:
        """The boolean filters that were given, as (name, wanted value)."""
        return [
            (name, wanted)
            for name in api.FLAG_FILTERS
            if (wanted := getattr(self, name)) is not None
        ]


@dataclass(frozen=True, slots=True)
class Truth:
    """What a perfect crawl of one query would have seen, ignoring any result cap."""

    item_ids: list[int]  # in the query's order; items served without an id are not here
    total: int  # every matching result, withdrawn ones too: the true `total_count`
    malformed_item_ids: list[int]  # served with a non-numeric price
    missing_item_id: int  # how many matching results are served without an item_id


def _cents(product: Product) -> int:
    return product.price_cents


def _mills(product: Product) -> int:
    """The price in tenths of a fen: three-decimal prices are half a fen above their cents."""
    return product.price_cents * 10 + 5 * product.half_fen


def withdrawn(product: Product, rate: float) -> bool:
    """Whether a product counts in totals but is never served (the real API's short pages).

    Drawn from the item id, a pseudo-random permutation, so every query agrees on it.
    """
    return product.item_id % _WITHDRAWN_MODULUS < rate * _WITHDRAWN_MODULUS


class Catalog:
    """Products per category, their evolution across price epochs, and query evaluation."""

    def __init__(
        self,
        *,
        seed: int | str = 0,
        default_size: int = 240,
        sizes: Mapping[int, int] | None = None,
        overlap: float = 0.1,
        malformed_rate: float = 0.0,
        price_point_share: float = 0.0,
        three_decimal_share: float = 0.0,
    ) -> None:
        self.default_size = default_size
        self.sizes = dict(sizes or {})
        if any(not 0 <= size <= _MAX_SIZE for size in (default_size, *self.sizes.values())):
            raise ValueError(f"category sizes must be between 0 and {_MAX_SIZE}")
        shares = (overlap, malformed_rate, price_point_share, three_decimal_share)
        if not all(0 <= share <= 1 for share in shares):
            raise ValueError("overlap, malformed_rate, price_point_share and "
                             "three_decimal_share are fractions between 0 and 1")
        self.overlap = overlap
        self.malformed_rate = malformed_rate
        #: Products costing PRICE_POINT_CENTS, more than a result cap may reach: no price
        #: range can split them, as happens with popular price points.
        self.price_point_share = price_point_share
        #: Products priced half a fen above a whole fen, served in three decimals.
        self.three_decimal_share = three_decimal_share
        self._prefix = f"tmapi-sandbox:{seed}:".encode()
        ids = random.Random(f"tmapi-sandbox:{seed}:item-ids")
        self._id_mul = ids.randrange(1, _ID_PRIME)
        self._id_add = ids.randrange(_ID_PRIME)
        # Caches sized for a benchmark's working set (a 50,000-product category costs ~15 MB of
        # products and ~50 MB of encoded items per language), bounded so memory stays bounded.
        self._products = lru_cache(maxsize=32)(self._build_products)
        self._borrowed = lru_cache(maxsize=64)(self._build_borrowed)
        self._results = lru_cache(maxsize=128)(self._evaluate)
        self._json_cache = lru_cache(maxsize=32)(self._json_slots)
        self._promoted = lru_cache(maxsize=128)(self._best_sellers)

    def size(self, cat_id: int) -> int:
        return self.sizes.get(cat_id, self.default_size)

    def products(self, cat_id: int, epoch: int = 0) -> Sequence[Product]:
        """The category's listing in catalogue (`default` sort) order, built once and cached."""
        return self._products(cat_id, epoch)

    def _hash(self, text: str, size: int = 32) -> bytes:
        return hashlib.blake2b(self._prefix + text.encode(), digest_size=size).digest()

    def _build_borrowed(self, cat_id: int) -> list[bool]:
        """Which positions of a category show the product of the previous category instead.

        The product at position p of category c is, with probability `overlap`, the one at
        position p of category c-1 — so about that fraction of c-1's products also appear in c.
        """
        rng = random.Random(f"{self._prefix.decode()}borrow:{cat_id}")
        return [rng.random() < self.overlap for _ in range(self.size(cat_id))]

    def _origin(self, cat_id: int, position: int) -> int:
        while (
            cat_id > 1 and position < self.size(cat_id - 1) and self._borrowed(cat_id)[position]
        ):
            cat_id -= 1
        return cat_id

    def _base_product(self, origin: int, position: int) -> Product:
        # Digest bytes: 0-1 price, 2-8 flags, 9 moq, 10-11 origin price, 12-13 sales,
        # 14 repurchase, 15 shop years, 16 score, 17-20 optional blocks, 21 area, 22 brand,
        # 23-25 title words, 26-27 model number, 28-30 malformation, 31 category path,
        # 32-36 seller id, 37-47 image name. Independent bytes keep the fields uncorrelated.
        d = hashlib.blake2b(self._prefix + b"p:%d:%d" % (origin, position),
                            digest_size=48).digest()
        sales_draw = int.from_bytes(d[12:14]) / 65536
        price_draw = int.from_bytes(d[0:2]) / 65536
        malformed = ""
        if self.malformed_rate and int.from_bytes(d[28:30]) / 65536 < self.malformed_rate:
            malformed = MISSING_ITEM_ID if d[30] & 1 else BAD_PRICE
        return Product(  # positional: measurably faster than keywords for 50,000 products
            _ID_BASE + (self._id_mul * (origin * _MAX_SIZE + position) + self._id_add) % _ID_PRIME,
            origin,
            position,
            d,
            # price log-uniform between 0.10 and 2000.00 CNY: most wholesale items are cheap
            PRICE_POINT_CENTS if price_draw < self.price_point_share
            else int(10 * 20_000 ** price_draw),
            0 if sales_draw < 0.1 else int(300_000 ** ((sales_draw - 0.1) / 0.9)),
            d[2] < 38,  # new_arrival
            d[3] < 102,  # support_dropshipping
            d[4] < 77,  # free_shipping
            d[5] < 26,  # is_super_factory
            malformed,
            # Drawn from the position's number, independent of the digest's bytes.
            (position * 7919 + origin) % 1000 < self.three_decimal_share * 1000,
        )

    def _at_epoch(self, product: Product, epoch: int) -> Product:
        """Replay the price changes of epochs 1..epoch; each change really moves the price."""
        cents, sales = product.price_cents, product.sales
        for block in range((epoch + _EPOCHS_PER_DIGEST - 1) // _EPOCHS_PER_DIGEST):
            d = self._hash(f"e:{product.origin_cat}:{product.position}:{block}")
            for i in range(min(_EPOCHS_PER_DIGEST, epoch - block * _EPOCHS_PER_DIGEST)):
                if d[2 * i] >= _EPOCH_CHANGE_THRESHOLD:
                    continue
                amount = d[2 * i + 1]
                moved = max(1, round(cents * (0.75 + amount * 0.6 / 255)))
                cents = moved if moved != cents else cents + 1
                if amount & 1:
                    sales += sales * (amount % 16) // 100 + amount % 7 + 1
        if (cents, sales) == (product.price_cents, product.sales):
            return product
        return product._replace(price_cents=cents, sales=sales)

    def _build_products(self, cat_id: int, epoch: int) -> Sequence[Product]:
        if epoch:
            return tuple(self._at_epoch(p, epoch) for p in self.products(cat_id, 0))
        borrowed = self._borrowed(cat_id)
        return tuple([
            self._base_product(
                self._origin(cat_id, position) if borrowed[position] else cat_id, position)
            for position in range(self.size(cat_id))
        ])

    def _evaluate(self, query: Query, epoch: int) -> Sequence[int]:
        """One pass per filter: list comprehensions keep a 50,000-product query in milliseconds."""
        products = self.products(query.cat_id, epoch)
        price: Callable[[Product], int] = _cents
        if self.three_decimal_share:
            price = _mills  # some prices lie between two fen: compare in tenths of a fen
            low, high = query.price_bounds(scale=1000)
            found = [p for p in products if (low is None or _mills(p) >= low)
                     and (high is None or _mills(p) <= high)]
        else:
            low, high = query.price_bounds()
            found = [p for p in products if low is None or p.price_cents >= low]
            if high is not None:
                found = [p for p in found if p.price_cents <= high]
        for name, wanted in query.flags():
            field = Product._fields.index(name)
            found = [p for p in found if p[field] is wanted]
        if query.sort == "sales":
            found.sort(key=lambda p: (-p.sales, p.item_id))
        elif query.sort == "price_up":
            found.sort(key=lambda p: (price(p), p.item_id))
        elif query.sort == "price_down":
            found.sort(key=lambda p: (-price(p), p.item_id))
        return tuple(p.position for p in found)

    def results(self, query: Query, epoch: int = 0) -> Sequence[int]:
        """Positions (into `products(cat_id, epoch)`) of the query's results, in order."""
        return self._results(query, epoch)

    def _json_slots(self, cat_id: int, epoch: int, language: str) -> list[str | None]:
        return [None] * self.size(cat_id)

    def items_json(
        self, cat_id: int, epoch: int, language: str, positions: Sequence[int]
    ) -> list[str]:
        """Serialized items, each encoded once per (category, epoch, language) and then reused."""
        slots = self._json_cache(cat_id, epoch, language)
        products = self.products(cat_id, epoch)
        out = []
        for position in positions:
            text = slots[position]
            if text is None:
                text = slots[position] = item_json(products[position], language)
            out.append(text)
        return out

    def query(
        self,
        cat_id: int,
        language: str = api.DEFAULT_LANGUAGE,
        sort: str = api.DEFAULT_SORT,
        *,
        price_start: str | float | Decimal | None = None,
        price_end: str | float | Decimal | None = None,
        new_arrival: bool | None = None,
        support_dropshipping: bool | None = None,
        free_shipping: bool | None = None,
        is_super_factory: bool | None = None,
        epoch: int = 0,
    ) -> list[dict[str, Any]]:
        """Every result of a query, uncapped, as the API would serve the items."""
        if language not in api.LANGUAGES:
            raise ValueError(f"unknown language {language!r}")
        q = Query.of(
            cat_id, sort, price_start=price_start, price_end=price_end, new_arrival=new_arrival,
            support_dropshipping=support_dropshipping, free_shipping=free_shipping,
            is_super_factory=is_super_factory,
        )
        products = self.products(cat_id, epoch)
        return [build_item(products[i], language) for i in self.results(q, epoch)]

    def promoted(self, query: Query, epoch: int, count: int) -> Sequence[int]:
        """Positions of the results a listing promotes: its `count` best sellers."""
        return self._promoted(query, epoch, count)

    def _best_sellers(self, query: Query, epoch: int, count: int) -> Sequence[int]:
        products = self.products(query.cat_id, epoch)
        ranked = sorted(self.results(query, epoch),
                        key=lambda i: (-products[i].sales, products[i].item_id))
        return tuple(ranked[:count])

    def truth(self, query: Query, epoch: int = 0, withdrawn_rate: float = 0.0) -> Truth:
        """What a complete crawl of `query` must find: every result that is ever served."""
        products = self.products(query.cat_id, epoch)
        found = [products[i] for i in self.results(query, epoch)]
        served = [p for p in found if not withdrawn(p, withdrawn_rate)]
        return Truth(
            item_ids=[p.item_id for p in served if p.malformed != MISSING_ITEM_ID],
            total=len(found),
            malformed_item_ids=[p.item_id for p in served if p.malformed == BAD_PRICE],
            missing_item_id=sum(p.malformed == MISSING_ITEM_ID for p in served),
        )

    def matching_ids(self, cat_id: int, *, epoch: int = 0, **filters: Any) -> set[int]:
        """The item_ids a complete crawl of (cat_id, filters) must find — what tests compare to.

        `filters` are `Query.of`'s keyword arguments (sort is accepted and irrelevant).
        """
        return set(self.truth(Query.of(cat_id, **filters), epoch).item_ids)

    def changed_ids(self, cat_id: int, epoch_a: int, epoch_b: int) -> set[int]:
        """Item ids whose price or sales figure differ between two epochs."""
        return {
            a.item_id
            for a, b in zip(self.products(cat_id, epoch_a), self.products(cat_id, epoch_b),
                            strict=True)
            if (a.price_cents, a.sales) != (b.price_cents, b.sales)
        }
