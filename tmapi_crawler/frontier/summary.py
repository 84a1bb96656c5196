"""What the frontier reads of an answer, and nothing more.

A ``PageSummary`` is small, plain data: a stored page's context and summary are enough to
replay the frontier's decisions later without paying for the page again. Counts and flags are
read leniently, because real answers send ``"2465"`` for 2465, ``1e12`` for a count, and
``"true"`` for true; what cannot be read is None, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Self

from tmapi_crawler.items import ProductItem

#: Longer digit strings are no count anyone means (and ``int()`` of them costs time).
_MAX_DIGITS: Final = 30
_BOOL_TEXT: Final = {"true": True, "false": False, "1": True, "0": False}


def lenient_count(value: Any) -> int | None:
    """A non-negative whole number, from an int, an integral float or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
            return int(text)
    return None


def lenient_flag(value: Any) -> bool | None:
    """A boolean, from a bool, 0/1 or its spelling as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return _BOOL_TEXT.get(value.strip().lower())
    return None


def _price(item: ProductItem) -> Decimal | None:
    price = item.typed.get("price") if item.typed else None
    if price is None:
        return None
    try:
        return Decimal(str(price))
    except InvalidOperation:
        return None


@dataclass(frozen=True, slots=True)
class PageSummary:
    """One answered page as the frontier sees it.

    ``items`` counts every item served (readable or not); ``ids`` are the readable item ids and
    ``prices`` one typed price (or None) per item, both in page order; ``page_size`` is the
    ``data.page_size`` the answer says it served.
    """

    items: int
    ids: tuple[int, ...] = ()
    prices: tuple[Decimal | None, ...] = ()
    total_count: int | None = None
    has_next_page: bool | None = None
    page_size: int | None = None

    @classmethod
    def read(cls, data: Mapping[str, Any], items: Sequence[ProductItem]) -> Self:
        """The summary of an answer's ``data`` block whose items were normalised to ``items``."""
        served = lenient_count(data.get("page_size"))
        return cls(
            items=len(items),
            ids=tuple(item.item_id for item in items if item.item_id is not None),
            prices=tuple(_price(item) for item in items),
            total_count=lenient_count(data.get("total_count")),
            has_next_page=lenient_flag(data.get("has_next_page")),
            page_size=served if served else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "ids": list(self.ids),
            "prices": [None if p is None else str(p) for p in self.prices],
            "total_count": self.total_count,
            "has_next_page": self.has_next_page,
            "page_size": self.page_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            items=int(data["items"]),
            ids=tuple(int(i) for i in data.get("ids", ())),
            prices=tuple(None if p is None else Decimal(p) for p in data.get("prices", ())),
            total_count=data.get("total_count"),
            has_next_page=data.get("has_next_page"),
            page_size=data.get("page_size"),
        )
