"""Turn one product of the API's ``items`` list into typed values.

The API spells almost every value as a display string ("0.60", "100000+", "1.2万+", "60%"), and
its answers are not guaranteed to be consistent. Typing happens once, here, so storage and
analysis can compare and sort numbers; an item whose values cannot be read is refused with a
reason naming the field instead of being stored half-understood.

This runs once per product on crawls of millions of items, so the common path uses exact-type
checks and dict look-ups and raises no exceptions; the slower, general branches only run for
unusual spellings.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from math import isfinite
from types import MappingProxyType
from typing import Any, Final

import bson
from bson.errors import BSONError

#: Keys of :func:`normalize`'s result that are always present — the public contract.
TYPED_FIELDS: Final = (
    "item_id",
    "price",
    "sale_price",
    "origin_price",
    "moq",
    "quantity_begin",
    "shop_years",
    "sales_90d",
    "sales_90d_is_lower_bound",
    "repurchase_rate",
    "composite_score",
    "free_shipping",
    "ship_in_48h",
    "is_super_factory",
    "is_powerful_seller",
    "low_refund_rate",
    "one_piece_min_order",
)
#: Language-independent descriptive keys :func:`normalize` copies when the API gives them.
PASSTHROUGH_FIELDS: Final = ("product_url", "img", "currency", "category_path")
#: Keys of :func:`translated_fields`' result (each only when the API gives it).
TRANSLATED_FIELDS: Final = ("title", "company_name", "area_from")

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
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
#: The largest item kept as received (its BSON size): a product document keeps one per language,
#: and MongoDB stops at 16 MB a document. A listing item is about 1 KB.
MAX_RAW_BYTES: Final = 1 << 20
#: The deepest nesting of an item kept as received (MongoDB documents its limit as 100 levels;
#: the item sits two levels down in its product, under ``raw.<language>``). Items are 3 deep.
MAX_RAW_DEPTH: Final = 90
#: How ``raw_text`` renders an item that cannot be kept as received: bounded in every direction.
_RENDER = reprlib.Repr()
_RENDER.maxlevel, _RENDER.maxdict, _RENDER.maxlist, _RENDER.maxtuple = 8, 100, 50, 50
_RENDER.maxstring, _RENDER.maxlong, _RENDER.maxother = 400, 80, 200
_RENDERED_CHARS: Final = 16_384


class MalformedItem(ValueError):
    """An item whose values cannot be read; the message is ``"<field>: <problem>"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _show(value: Any) -> str:
    """A bounded repr, so a huge or hostile value cannot flood logs or stored rejections."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _block(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """A nested object; absent or null is an empty one, anything else is malformed."""
    value = parent.get(key)
    if type(value) is dict:
        return value
    if value is None:
        return _EMPTY
    if isinstance(value, Mapping):
        return value
    raise MalformedItem(f"{path}: not an object: {_show(value)}")


def _float(value: Any, name: str) -> float | None:
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
            raise MalformedItem(f"{name}: not a number: {_show(value)}") from None
    elif kind is float:
        number = value
    elif kind is int:
        if not -_MAX_INT <= value <= _MAX_INT:
            raise MalformedItem(f"{name}: out of range: {_show(value)}")
        number = float(value)
    elif value is None:
        return None
    else:
        raise MalformedItem(f"{name}: not a number: {_show(value)}")
    if not isfinite(number):
        raise MalformedItem(f"{name}: not a number: {_show(value)}")
    if number < 0:
        raise MalformedItem(f"{name}: out of range: {_show(value)}")
    return number


def _price(value: Any, name: str) -> float | None:
    """A price; a range such as "1.50-3.00" gives its lower bound.

    Listings show a product's "from" price: the range covers quantity tiers or variants, and
    the lower bound is what the listing itself advertises and sorts by (``price_up``).
    """
    try:
        return _float(value, name)
    except MalformedItem:
        if type(value) is not str:
            raise
    for separator in _RANGE_SEPARATORS:
        low, found, high = value.partition(separator)
        if found:
            try:
                low_price, high_price = _float(low, name), _float(high, name)
            except MalformedItem:
                break
            if low_price is None or high_price is None:
                break
            return min(low_price, high_price)
    raise MalformedItem(f"{name}: not a number: {_show(value)}")


def _int(value: Any, name: str) -> int | None:
    """A non-negative whole number; "" is unknown, and 3.0 or "3.0" is 3."""
    kind = type(value)
    if kind is str:
        text = value.strip()
        if text.isdigit() and text.isascii():
            return _bounded(int(text), value, name)
    elif kind is int:
        return _bounded(value, value, name)
    number = _float(value, name)
    if number is None:
        return None
    if not number.is_integer():
        raise MalformedItem(f"{name}: not a whole number: {_show(value)}")
    return _bounded(int(number), value, name)


def _bounded(number: int, value: Any, name: str) -> int:
    """``number`` if it fits a non-negative 64-bit integer (what MongoDB can store)."""
    if 0 <= number <= _MAX_INT:
        return number
    raise MalformedItem(f"{name}: out of range: {_show(value)}")


def _bool(value: Any, name: str) -> bool | None:
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
    raise MalformedItem(f"{name}: not a boolean: {_show(value)}")


def _sales(value: Any, name: str) -> tuple[int | None, bool]:
    """A sales count and whether it is a lower bound ("100000+", "1.2万+")."""
    if type(value) is not str:
        return _int(value, name), False
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
        number = _float(text, name)
    except MalformedItem:
        number = None
    if number is None:
        raise MalformedItem(f"{name}: not a sales count: {_show(value)}")
    number *= multiplier or 1
    if number > _MAX_INT:  # also keeps an infinite product away from round()
        raise MalformedItem(f"{name}: out of range: {_show(value)}")
    return round(number), is_lower_bound


def _rate(value: Any, name: str) -> float | None:
    """A fraction in 0..1: "60%" is 0.6; a bare number above 1 is taken as a percentage."""
    if type(value) is str and value.rstrip().endswith("%"):
        try:
            percent = _float(value.rstrip()[:-1], name)
        except MalformedItem:
            percent = None
        if percent is None:
            raise MalformedItem(f"{name}: not a rate: {_show(value)}")
        rate = percent / 100
    else:
        rate = _float(value, name)
        if rate is None:
            return None
        if rate > 1:
            rate /= 100
    if rate > 1:
        raise MalformedItem(f"{name}: out of range: {_show(value)}")
    return rate


def parse_item_id(value: Any) -> int:
    """The product's identity: a positive integer, possibly sent as a string of digits.

    Public so a caller can still identify an item that :func:`normalize` refused.
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
    raise MalformedItem(f"item_id: not a positive integer: {_show(value)}")


def _text(value: Any, name: str) -> str | None:
    """A string field; "" is treated as absent."""
    if type(value) is str:
        return value or None
    if value is None:
        return None
    raise MalformedItem(f"{name}: not a string: {_show(value)}")


def _text_list(value: Any, name: str) -> list[str] | None:
    """A list of strings; integer elements (category ids) become their decimal strings."""
    if value is None:
        return None
    if type(value) is not list:
        raise MalformedItem(f"{name}: not a list: {_show(value)}")
    for element in value:
        if type(element) is not str:
            break
    else:
        return value.copy()
    converted = []
    for element in value:
        if type(element) is str:
            converted.append(element)
        elif type(element) is int:
            converted.append(str(element))
        else:
            raise MalformedItem(f"{name}: not a list of strings: {_show(value)}")
    return converted


def _nested_deeper(value: Mapping[str, Any] | list[Any], limit: int) -> bool:
    for element in value.values() if type(value) is dict else value:
        kind = type(element)
        if (kind is dict or kind is list) and (limit == 0 or _nested_deeper(element, limit - 1)):
            return True
    return False


def check_storable(raw: Mapping[str, Any]) -> None:
    """Refuse an item MongoDB could not store as received, so it is rejected alone instead of
    failing its whole batch: integers beyond 64 bits, a NUL in a key, text that is not valid
    Unicode (a lone surrogate), more than ``MAX_RAW_BYTES`` or ``MAX_RAW_DEPTH`` levels.

    Keys with ``.`` or a leading ``$`` are kept: MongoDB 5.0 and later store them.
    """
    try:
        size = len(bson.encode(raw))
    except OverflowError:
        raise MalformedItem("item: an integer beyond MongoDB's 64 bits") from None
    except UnicodeEncodeError:
        raise MalformedItem("item: text that is not valid Unicode") from None
    except (BSONError, RecursionError, TypeError, ValueError) as error:
        raise MalformedItem(f"item: not storable: {_show(str(error))}") from None
    if size > MAX_RAW_BYTES:
        raise MalformedItem(f"item: {size} bytes, more than the {MAX_RAW_BYTES} kept")
    if _nested_deeper(raw if type(raw) is dict else dict(raw), MAX_RAW_DEPTH):
        raise MalformedItem(f"item: nested deeper than {MAX_RAW_DEPTH} levels")


def rendered(raw: Any) -> str:
    """A bounded, always storable text rendering of an item that could not be kept as is."""
    return _RENDER.repr(raw)[:_RENDERED_CHARS]


def _require_mapping(raw: Any) -> None:
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise MalformedItem(f"item: not an object: {_show(raw)}")


def normalize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The language-independent typed values of one API item.

    Every key of :data:`TYPED_FIELDS` is present (``None`` when the API did not say);
    :data:`PASSTHROUGH_FIELDS` are present only when the API gave them. Raises
    :class:`MalformedItem` when a value is present but unreadable, a block has the wrong type,
    or the item could not be stored as received (:func:`check_storable`).
    """
    _require_mapping(raw)
    item_id = parse_item_id(raw.get("item_id"))
    price_info = _block(raw, "price_info", "price_info")
    sale_info = _block(raw, "sale_info", "sale_info")
    delivery_info = _block(raw, "delivery_info", "delivery_info")
    shop_info = _block(raw, "shop_info", "shop_info")
    score_info = _block(shop_info, "score_info", "shop_info.score_info")

    price = _price(raw.get("price"), "price")
    if price is None:
        price = _price(price_info.get("price"), "price_info.price")
    ship_in_48h = _bool(raw.get("ship_in_48h"), "ship_in_48h")
    if ship_in_48h is None:
        ship_in_48h = _bool(delivery_info.get("ship_in_48h"), "delivery_info.ship_in_48h")
    sales_90d, sales_90d_is_lower_bound = _sales(
        sale_info.get("sale_quantity_90days"), "sale_info.sale_quantity_90days"
    )

    typed: dict[str, Any] = {
        "item_id": item_id,
        "price": price,
        "sale_price": _price(price_info.get("sale_price"), "price_info.sale_price"),
        "origin_price": _price(price_info.get("origin_price"), "price_info.origin_price"),
        "moq": _int(raw.get("moq"), "moq"),
        "quantity_begin": _int(raw.get("quantity_begin"), "quantity_begin"),
        "shop_years": _int(shop_info.get("shop_years"), "shop_info.shop_years"),
        "sales_90d": sales_90d,
        "sales_90d_is_lower_bound": sales_90d_is_lower_bound,
        "repurchase_rate": _rate(raw.get("item_repurchase_rate"), "item_repurchase_rate"),
        "composite_score": _float(
            score_info.get("composite_score"), "shop_info.score_info.composite_score"
        ),
        "free_shipping": _bool(delivery_info.get("free_shipping"), "delivery_info.free_shipping"),
        "ship_in_48h": ship_in_48h,
        "is_super_factory": _bool(shop_info.get("is_super_factory"), "shop_info.is_super_factory"),
        "is_powerful_seller": _bool(
            shop_info.get("is_powerful_seller"), "shop_info.is_powerful_seller"
        ),
        "low_refund_rate": _bool(raw.get("low_refund_rate"), "low_refund_rate"),
        "one_piece_min_order": _bool(raw.get("one_piece_min_order"), "one_piece_min_order"),
    }
    for name in ("product_url", "img", "currency"):
        text = _text(raw.get(name), name)
        if text is not None:
            typed[name] = text
    category_path = _text_list(raw.get("category_path"), "category_path")
    if category_path is not None:
        typed["category_path"] = category_path
    check_storable(raw)
    return typed


def translated_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The text the API translates into the requested language, kept apart from
    :func:`normalize` because it differs between answers for the same product.

    Keys are those of :data:`TRANSLATED_FIELDS` the API gave (absent, null or "" are omitted).
    """
    _require_mapping(raw)
    shop_info = _block(raw, "shop_info", "shop_info")
    delivery_info = _block(raw, "delivery_info", "delivery_info")
    fields: dict[str, Any] = {}
    title = _text(raw.get("title"), "title")
    if title is not None:
        fields["title"] = title
    company_name = _text(shop_info.get("company_name"), "shop_info.company_name")
    if company_name is not None:
        fields["company_name"] = company_name
    area_from = _text_list(delivery_info.get("area_from"), "delivery_info.area_from")
    if area_from is not None:
        fields["area_from"] = area_from
    return fields
