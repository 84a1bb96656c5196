"""Turn one product of the API's ``items`` list into typed values.

The API spells almost every value as a display string ("0.60", "100000+", "1.2万+", "60%"), and
its answers are not guaranteed to be consistent. Typing happens once, here (each number read
by ``scalars``), so storage and analysis can compare and sort numbers; an item whose values
cannot be read is refused with a reason naming the field instead of being stored
half-understood.

This runs once per product on crawls of millions of items, so the common path uses exact-type
checks and dict look-ups and raises no exceptions; the slower, general branches only run for
unusual spellings.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import bson
from bson.errors import BSONError

from tmapi_crawler.scalars import (
    MalformedItem,
    parse_bool,
    parse_float,
    parse_int,
    parse_item_id,
    parse_price,
    parse_rate,
    parse_sales,
    shown_value,
)

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


def _block(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """A nested object; absent or null is an empty one, anything else is malformed."""
    value = parent.get(key)
    if type(value) is dict:
        return value
    if value is None:
        return _EMPTY
    if isinstance(value, Mapping):
        return value
    raise MalformedItem(f"{path}: not an object: {shown_value(value)}")


def _text(value: Any, name: str) -> str | None:
    """A string field; "" is treated as absent."""
    if type(value) is str:
        return value or None
    if value is None:
        return None
    raise MalformedItem(f"{name}: not a string: {shown_value(value)}")


def _text_list(value: Any, name: str) -> list[str] | None:
    """A list of strings; integer elements (category ids) become their decimal strings."""
    if value is None:
        return None
    if type(value) is not list:
        raise MalformedItem(f"{name}: not a list: {shown_value(value)}")
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
            raise MalformedItem(f"{name}: not a list of strings: {shown_value(value)}")
    return converted


def _nested_deeper(value: Mapping[str, Any] | list[Any], limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels below ``value``: a level at a time,
    one comprehension each, not a call per container (B3's profile, BENCHMARKS.md)."""
    level = [value]
    for _ in range(limit + 1):
        level = [element for container in level
                 for element in (container.values() if type(container) is dict else container)
                 if type(element) is dict or type(element) is list]
        if not level:
            return False
    return True


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
        raise MalformedItem(f"item: not storable: {shown_value(str(error))}") from None
    if size > MAX_RAW_BYTES:
        raise MalformedItem(f"item: {size} bytes, more than the {MAX_RAW_BYTES} kept")
    if _nested_deeper(raw if type(raw) is dict else dict(raw), MAX_RAW_DEPTH):
        raise MalformedItem(f"item: nested deeper than {MAX_RAW_DEPTH} levels")


def rendered(raw: Any) -> str:
    """A bounded, always storable text rendering of an item that could not be kept as is."""
    return _RENDER.repr(raw)[:_RENDERED_CHARS]


def _require_mapping(raw: Any) -> None:
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise MalformedItem(f"item: not an object: {shown_value(raw)}")


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

    price = parse_price(raw.get("price"), "price")
    if price is None:
        price = parse_price(price_info.get("price"), "price_info.price")
    ship_in_48h = parse_bool(raw.get("ship_in_48h"), "ship_in_48h")
    if ship_in_48h is None:
        ship_in_48h = parse_bool(delivery_info.get("ship_in_48h"), "delivery_info.ship_in_48h")
    sales_90d, sales_90d_is_lower_bound = parse_sales(
        sale_info.get("sale_quantity_90days"), "sale_info.sale_quantity_90days"
    )

    typed: dict[str, Any] = {
        "item_id": item_id,
        "price": price,
        "sale_price": parse_price(price_info.get("sale_price"), "price_info.sale_price"),
        "origin_price": parse_price(price_info.get("origin_price"), "price_info.origin_price"),
        "moq": parse_int(raw.get("moq"), "moq"),
        "quantity_begin": parse_int(raw.get("quantity_begin"), "quantity_begin"),
        "shop_years": parse_int(shop_info.get("shop_years"), "shop_info.shop_years"),
        "sales_90d": sales_90d,
        "sales_90d_is_lower_bound": sales_90d_is_lower_bound,
        "repurchase_rate": parse_rate(raw.get("item_repurchase_rate"), "item_repurchase_rate"),
        "composite_score": parse_float(
            score_info.get("composite_score"), "shop_info.score_info.composite_score"
        ),
        "free_shipping": parse_bool(
            delivery_info.get("free_shipping"), "delivery_info.free_shipping"
        ),
        "ship_in_48h": ship_in_48h,
        "is_super_factory": parse_bool(
            shop_info.get("is_super_factory"), "shop_info.is_super_factory"
        ),
        "is_powerful_seller": parse_bool(
            shop_info.get("is_powerful_seller"), "shop_info.is_powerful_seller"
        ),
        "low_refund_rate": parse_bool(raw.get("low_refund_rate"), "low_refund_rate"),
        "one_piece_min_order": parse_bool(raw.get("one_piece_min_order"), "one_piece_min_order"),
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
