"""The API's display strings read as numbers: prices (and price ranges), whole numbers,
abbreviated sales counts ("1.2万+"), rates ("60%"), flags and the item id.

Apart from ``normalize`` (which reads an item's blocks and text) because these are the one
job of turning a value into a number MongoDB can store and sort, or refusing it with a reason
(:class:`MalformedItem`). The common path uses exact-type checks and raises no exceptions: it
runs for every field of millions of items.
"""

from __future__ import annotations

from math import isfinite
from typing import Any, Final

_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False, "": None}
#: Suffixes of abbreviated counts: 万 (and its romanisation "w") is 10,000, 亿 is 10^8.
_MULTIPLIERS: Final = {
    "万": 10_000, "w": 10_000, "W": 10_000, "亿": 100_000_000,
    "k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000,
}
_RANGE_SEPARATORS: Final = ("-", "~", "\uff5e")  # ASCII hyphen, tilde, full-width tilde
_SHOWN_CHARS: Final = 60
#: MongoDB stores at most a signed 64-bit integer; a bigger one is garbage, not a count or id.
_MAX_INT: Final = 2**63 - 1


class MalformedItem(ValueError):
    """An item whose values cannot be read; the message is ``"<field>: <problem>"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shown_value(value: Any) -> str:
    """A bounded repr, so a huge or hostile value cannot flood logs or stored rejections."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse_float(value: Any, name: str) -> float | None:
    """A non-negative finite number; every number in a listing is a price, rate or score."""
    kind = type(value)
    if kind is str:
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            if value.isspace():
                return None
            raise MalformedItem(f"{name}: not a number: {shown_value(value)}") from None
    elif kind is float:
        number = value
    elif kind is int:
        if not -_MAX_INT <= value <= _MAX_INT:
            raise MalformedItem(f"{name}: out of range: {shown_value(value)}")
        number = float(value)
    elif value is None:
        return None
    else:
        raise MalformedItem(f"{name}: not a number: {shown_value(value)}")
    if not isfinite(number):
        raise MalformedItem(f"{name}: not a number: {shown_value(value)}")
    if number < 0:
        raise MalformedItem(f"{name}: out of range: {shown_value(value)}")
    return number


def parse_price(value: Any, name: str) -> float | None:
    """A price; a range such as "1.50-3.00" gives its lower bound.

    Listings show a product's "from" price: the range covers quantity tiers or variants, and
    the lower bound is what the listing itself advertises and sorts by (``price_up``).
    """
    try:
        return parse_float(value, name)
    except MalformedItem:
        if type(value) is not str:
            raise
    for separator in _RANGE_SEPARATORS:
        low, found, high = value.partition(separator)
        if found:
            try:
                low_price, high_price = parse_float(low, name), parse_float(high, name)
            except MalformedItem:
                break
            if low_price is None or high_price is None:
                break
            return min(low_price, high_price)
    raise MalformedItem(f"{name}: not a number: {shown_value(value)}")


def parse_int(value: Any, name: str) -> int | None:
    """A non-negative whole number; "" is unknown, and 3.0 or "3.0" is 3."""
    kind = type(value)
    if kind is str:
        text = value.strip()
        if text.isdigit() and text.isascii():
            return _bounded(int(text), value, name)
    elif kind is int:
        return _bounded(value, value, name)
    number = parse_float(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise MalformedItem(f"{name}: not a whole number: {shown_value(value)}")
    return _bounded(int(number), value, name)


def _bounded(number: int, value: Any, name: str) -> int:
    """``number`` if it fits a non-negative 64-bit integer (what MongoDB can store)."""
    if 0 <= number <= _MAX_INT:
        return number
    raise MalformedItem(f"{name}: out of range: {shown_value(value)}")


def parse_bool(value: Any, name: str) -> bool | None:
    """A flag; the strings "true"/"false"/"1"/"0" and the numbers 0/1 count, "" is unknown."""
    if value is True or value is False or value is None:
        return value
    kind = type(value)
    if kind is str:
        flag = _BOOLS.get(value.strip().lower(), ...)
        if flag is not ...:
            return flag
    elif kind is int and value in (0, 1):
        return value == 1
    raise MalformedItem(f"{name}: not a boolean: {shown_value(value)}")


def parse_sales(value: Any, name: str) -> tuple[int | None, bool]:
    """A sales count and whether it is a lower bound ("100000+", "1.2万+")."""
    if type(value) is not str:
        return parse_int(value, name), False
    text = value.strip()
    if not text:
        return None, False
    if text.isdigit() and text.isascii():
        return _bounded(int(text), value, name), False
    is_lower_bound = text[-1] == "+"
    if is_lower_bound:
        text = text[:-1].rstrip()
    multiplier = _MULTIPLIERS.get(text[-1:]) if text else None
    if multiplier is not None:
        text = text[:-1].rstrip()
    if "," in text:
        text = text.replace(",", "")
    if text.isdigit() and text.isascii():
        return _bounded(int(text) * (multiplier or 1), value, name), is_lower_bound
    try:
        number = parse_float(text, name)
    except MalformedItem:
        number = None
    if number is None:
        raise MalformedItem(f"{name}: not a sales count: {shown_value(value)}")
    number *= multiplier or 1
    if number > _MAX_INT:  # also keeps an infinite product away from round()
        raise MalformedItem(f"{name}: out of range: {shown_value(value)}")
    return round(number), is_lower_bound


def parse_rate(value: Any, name: str) -> float | None:
    """A fraction in 0..1: "60%" is 0.6; a bare number above 1 is taken as a percentage."""
    if type(value) is str and value.rstrip().endswith("%"):
        try:
            percent = parse_float(value.rstrip()[:-1], name)
        except MalformedItem:
            percent = None
        if percent is None:
            raise MalformedItem(f"{name}: not a rate: {shown_value(value)}")
        rate = percent / 100
    else:
        rate = parse_float(value, name)
        if rate is None:
            return None
        if rate > 1:
            rate /= 100
    if rate > 1:
        raise MalformedItem(f"{name}: out of range: {shown_value(value)}")
    return rate


def parse_item_id(value: Any) -> int:
    """The product's identity: a positive integer, possibly sent as a string of digits.

    Public so a caller can still identify an item that ``normalize.normalize`` refused.
    """
    if type(value) is int:
        if 0 < value <= _MAX_INT:
            return value
    elif type(value) is str:
        text = value.strip()
        if text.isdigit() and text.isascii() and 0 < int(text) <= _MAX_INT:
            return int(text)
    if value is None:
        raise MalformedItem("item_id: missing")
    raise MalformedItem(f"item_id: not a positive integer: {shown_value(value)}")
