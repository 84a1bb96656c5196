"""Normalisation of one API item, and the item classes that carry it."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import FrozenInstanceError
from types import MappingProxyType
from typing import Any

import pytest
from itemadapter import ItemAdapter
from scrapy.exporters import JsonLinesItemExporter

from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.normalize import (
    MAX_RAW_BYTES,
    MAX_RAW_DEPTH,
    PASSTHROUGH_FIELDS,
    TRANSLATED_FIELDS,
    TYPED_FIELDS,
    normalize,
    rendered,
    translated_fields,
)
from tmapi_crawler.scalars import MalformedItem, parse_item_id

#: The example item of the API reference (docs: category-items-v2.md, "Response Example"), verbatim.
REFERENCE_ITEM: dict[str, Any] = json.loads("""
{
  "item_id": 991188728585,
  "product_url": "https://detail.1688.com/offer/991188728585.html",
  "title": "2817桃心太阳镜爱心太阳眼镜果冻色无框心型连体眼镜炫目色彩眼镜",
  "img": "https://cbu01.alicdn.com/img/ibank/O1CN01l1LMMu23dNfRuPnh4_!!2219960167278-0-cib.jpg",
  "category_path": ["54", "80"],
  "price": "0.60",
  "price_info": {
    "price": "0.60",
    "sale_price": "0.60",
    "origin_price": ""
  },
  "currency": "CNY",
  "moq": "1",
  "quantity_begin": "1",
  "sale_info": {
    "sale_quantity_90days": "100000+"
  },
  "delivery_info": {
    "area_from": ["浙江", "台州市"],
    "free_shipping": false,
    "ship_in_48h": false
  },
  "shop_info": {
    "company_name": "台州市路桥喜字电子商务商行",
    "is_powerful_seller": false,
    "is_super_factory": false,
    "shop_years": 1,
    "score_info": {
      "composite_score": "4.0"
    }
  },
  "item_repurchase_rate": "60%",
  "low_refund_rate": false,
  "ship_in_48h": false,
  "one_piece_min_order": false
}
""")

CONTEXT = QueryContext(
    cat_id=1031922,
    language="en",
    sort="sales",
    filters={"price_start": "1", "price_end": "9.5", "free_shipping": True},
    page=3,
    position=7,
)


def item(**changes: Any) -> dict[str, Any]:
    """The reference item with top-level keys replaced (a value of ``...`` removes the key)."""
    raw = copy.deepcopy(REFERENCE_ITEM)
    for key, value in changes.items():
        if value is ...:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def with_block(block: str, **changes: Any) -> dict[str, Any]:
    """The reference item with keys of one nested block replaced or (``...``) removed."""
    raw = copy.deepcopy(REFERENCE_ITEM)
    for key, value in changes.items():
        if value is ...:
            raw[block].pop(key, None)
        else:
            raw[block][key] = value
    return raw


def with_score(value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(REFERENCE_ITEM)
    raw["shop_info"]["score_info"]["composite_score"] = value
    return raw


def malformed(raw: Any) -> str:
    with pytest.raises(MalformedItem) as caught:
        normalize(raw)
    return str(caught.value)


# --- the reference item --------------------------------------------------------------------


def test_reference_item() -> None:
    assert normalize(REFERENCE_ITEM) == {
        "item_id": 991188728585,
        "price": 0.6,
        "sale_price": 0.6,
        "origin_price": None,
        "moq": 1,
        "quantity_begin": 1,
        "shop_years": 1,
        "sales_90d": 100000,
        "sales_90d_is_lower_bound": True,
        "repurchase_rate": 0.6,
        "composite_score": 4.0,
        "free_shipping": False,
        "ship_in_48h": False,
        "is_super_factory": False,
        "is_powerful_seller": False,
        "low_refund_rate": False,
        "one_piece_min_order": False,
        "product_url": "https://detail.1688.com/offer/991188728585.html",
        "img": "https://cbu01.alicdn.com/img/ibank/O1CN01l1LMMu23dNfRuPnh4_!!2219960167278-0-cib.jpg",
        "currency": "CNY",
        "category_path": ["54", "80"],
    }


def test_reference_item_translated_fields() -> None:
    assert translated_fields(REFERENCE_ITEM) == {
        "title": "2817桃心太阳镜爱心太阳眼镜果冻色无框心型连体眼镜炫目色彩眼镜",
        "company_name": "台州市路桥喜字电子商务商行",
        "area_from": ["浙江", "台州市"],
    }


def test_field_name_constants_match_output() -> None:
    typed = normalize(REFERENCE_ITEM)
    assert set(typed) == set(TYPED_FIELDS) | set(PASSTHROUGH_FIELDS)
    assert set(translated_fields(REFERENCE_ITEM)) == set(TRANSLATED_FIELDS)
    assert not set(typed) & set(TRANSLATED_FIELDS)


def test_input_is_not_modified() -> None:
    raw = item()
    normalize(raw)
    translated_fields(raw)
    assert raw == REFERENCE_ITEM


def test_lists_are_copies() -> None:
    raw = item()
    normalize(raw)["category_path"].append("x")
    translated_fields(raw)["area_from"].append("x")
    assert raw == REFERENCE_ITEM


def test_minimal_item_has_every_typed_field() -> None:
    typed = normalize({"item_id": 1})
    assert set(typed) == set(TYPED_FIELDS)
    assert typed["item_id"] == 1
    assert typed["sales_90d_is_lower_bound"] is False
    unknown = set(TYPED_FIELDS) - {"item_id", "sales_90d_is_lower_bound"}
    assert all(typed[name] is None for name in unknown)
    assert translated_fields({"item_id": 1}) == {}


def test_accepts_any_mapping() -> None:
    assert normalize(MappingProxyType(item())) == normalize(REFERENCE_ITEM)


def test_not_an_object() -> None:
    assert malformed(["item_id", 1]) == "item: not an object: ['item_id', 1]"
    with pytest.raises(MalformedItem, match=r"^item: not an object"):
        translated_fields("x")  # type: ignore[arg-type]


def test_malformed_item_is_value_error_with_reason() -> None:
    error = MalformedItem("moq: not a number: 'x'")
    assert isinstance(error, ValueError)
    assert error.reason == str(error) == "moq: not a number: 'x'"


# --- item_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(991188728585, 991188728585), ("991188728585", 991188728585), (" 7 ", 7)],
)
def test_item_id(value: Any, expected: int) -> None:
    assert normalize(item(item_id=value))["item_id"] == expected
    assert parse_item_id(value) == expected


@pytest.mark.parametrize("value", [..., None])
def test_item_id_missing(value: Any) -> None:
    assert malformed(item(item_id=value)) == "item_id: missing"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "True"),
        (False, "False"),
        (0, "0"),
        (-5, "-5"),
        ("", "''"),
        ("12a", "'12a'"),
        ("-5", "'-5'"),
        ("٣", "'٣'"),  # a digit, but not an ASCII one
        (12.0, "12.0"),
        ([1], "[1]"),
        (2**63, str(2**63)),
    ],
)
def test_item_id_invalid(value: Any, shown: str) -> None:
    assert malformed(item(item_id=value)) == f"item_id: not a positive integer: {shown}"


def test_item_id_is_checked_first() -> None:
    assert malformed(item(item_id=None, moq="x")) == "item_id: missing"


# --- prices --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.60", 0.6),
        ("12", 12.0),
        (" 3.5 ", 3.5),
        (12, 12.0),
        (0, 0.0),
        (2.25, 2.25),
        ("", None),
        ("  ", None),
        (None, None),
        ("1.50-3.00", 1.5),  # a range: the "from" price
        ("1.50 - 3.00", 1.5),
        ("3.00-1.50", 1.5),
        ("1.5~3", 1.5),
        ("1.5\uff5e3", 1.5),
        ("1e-2", 0.01),  # a "-" that is not a range
    ],
)
def test_sale_price(value: Any, expected: float | None) -> None:
    assert normalize(with_block("price_info", sale_price=value))["sale_price"] == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "not a number: 'abc'"),
        ({"v": 1}, "not a number: {'v': 1}"),
        (True, "not a number: True"),
        ([1.0], "not a number: [1.0]"),
        ("nan", "not a number: 'nan'"),
        ("inf", "not a number: 'inf'"),
        (float("nan"), "not a number: nan"),
        ("-1", "not a number: '-1'"),
        (-1, "out of range: -1"),
        (-0.5, "out of range: -0.5"),
        ("1.50-", "not a number: '1.50-'"),
        ("1.50-abc", "not a number: '1.50-abc'"),
        ("1-2-3", "not a number: '1-2-3'"),
        ("¥1.50", "not a number: '¥1.50'"),
        (10**400, "out of range: " + repr(10**400)[:57] + "..."),
    ],
)
def test_sale_price_invalid(value: Any, problem: str) -> None:
    raw = with_block("price_info", sale_price=value)
    assert malformed(raw) == f"price_info.sale_price: {problem}"


def test_origin_price() -> None:
    assert normalize(with_block("price_info", origin_price="9.90"))["origin_price"] == 9.9
    raw = with_block("price_info", origin_price="x")
    assert malformed(raw) == "price_info.origin_price: not a number: 'x'"


def test_price_top_level_wins() -> None:
    raw = item(price="2.00")
    assert normalize(raw)["price"] == 2.0


@pytest.mark.parametrize("top", [..., None, ""])
def test_price_falls_back_to_price_info(top: Any) -> None:
    raw = item(price=top)
    raw["price_info"]["price"] = "5.5"
    assert normalize(raw)["price"] == 5.5


def test_price_missing_everywhere() -> None:
    assert normalize(item(price=..., price_info=...))["price"] is None


def test_price_invalid_names_its_source() -> None:
    assert malformed(item(price="x")) == "price: not a number: 'x'"
    raw = item(price=...)
    raw["price_info"]["price"] = "x"
    assert malformed(raw) == "price_info.price: not a number: 'x'"


def test_long_values_are_shortened_in_reasons() -> None:
    reason = malformed(item(price="x" * 10_000))
    assert reason.startswith("price: not a number: 'xxx")
    assert reason.endswith("...")
    assert len(reason) < 100


# --- whole numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1), ("250", 250), (" 2 ", 2), (3, 3), (0, 0), (4.0, 4), ("5.0", 5),
        ("", None), (None, None),
    ],
)
@pytest.mark.parametrize("field", ["moq", "quantity_begin"])
def test_top_level_counts(field: str, value: Any, expected: int | None) -> None:
    result = normalize(item(**{field: value}))[field]
    assert result == expected
    assert result is None or type(result) is int


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "not a number: 'abc'"),
        (True, "not a number: True"),
        (1.5, "not a whole number: 1.5"),
        ("1.5", "not a whole number: '1.5'"),
        (-1, "out of range: -1"),
        ("-1", "out of range: '-1'"),
        (2**63, f"out of range: {2**63}"),
        ({}, "not a number: {}"),
    ],
)
def test_moq_invalid(value: Any, problem: str) -> None:
    assert malformed(item(moq=value)) == f"moq: {problem}"


def test_quantity_begin_missing() -> None:
    assert normalize(item(quantity_begin=...))["quantity_begin"] is None


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1), ("12", 12), (3.0, 3), ("", None), (..., None)]
)
def test_shop_years(value: Any, expected: int | None) -> None:
    assert normalize(with_block("shop_info", shop_years=value))["shop_years"] == expected


def test_shop_years_invalid() -> None:
    raw = with_block("shop_info", shop_years="ten")
    assert malformed(raw) == "shop_info.shop_years: not a number: 'ten'"


# --- 90-day sales --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "lower_bound"),
    [
        ("100000+", 100000, True),
        ("1.2万+", 12000, True),
        ("3万", 30000, False),
        ("10万+", 100000, True),
        ("1.5w+", 15000, True),
        ("2亿", 200000000, False),
        ("1.5k", 1500, False),
        ("2K", 2000, False),
        ("2K+", 2000, True),
        ("1.2M", 1200000, False),
        ("1,200+", 1200, True),
        ("350", 350, False),
        (" 350 ", 350, False),
        ("0", 0, False),
        (350, 350, False),
        (350.0, 350, False),
        ("", None, False),
        (None, None, False),
        (..., None, False),
    ],
)
def test_sales_90d(value: Any, expected: int | None, lower_bound: bool) -> None:
    typed = normalize(with_block("sale_info", sale_quantity_90days=value))
    assert typed["sales_90d"] == expected
    assert type(typed["sales_90d"]) is int or expected is None
    assert typed["sales_90d_is_lower_bound"] is lower_bound


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("many", "not a sales count: 'many'"),
        ("+", "not a sales count: '+'"),
        ("万+", "not a sales count: '万+'"),
        ("-5", "not a sales count: '-5'"),
        ("1.2x", "not a sales count: '1.2x'"),
        ("1e300万", "out of range: '1e300万'"),
        (str(2**63), f"out of range: '{2**63}'"),
        (-3, "out of range: -3"),
        (1.5, "not a whole number: 1.5"),
        (True, "not a number: True"),
        (["1"], "not a number: ['1']"),
    ],
)
def test_sales_90d_invalid(value: Any, problem: str) -> None:
    raw = with_block("sale_info", sale_quantity_90days=value)
    assert malformed(raw) == f"sale_info.sale_quantity_90days: {problem}"


# --- repurchase rate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("60%", 0.6),
        ("7.5%", 0.075),
        ("0%", 0.0),
        ("100%", 1.0),
        (" 60 % ", 0.6),
        ("0.6", 0.6),  # no "%" and at most 1: already a fraction
        ("1", 1.0),
        ("60", 0.6),  # no "%" and above 1: a percentage
        (60, 0.6),
        (0.25, 0.25),
        ("", None),
        (None, None),
        (..., None),
    ],
)
def test_repurchase_rate(value: Any, expected: float | None) -> None:
    assert normalize(item(item_repurchase_rate=value))["repurchase_rate"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("high", "not a number: 'high'"),
        ("%", "not a rate: '%'"),
        ("abc%", "not a rate: 'abc%'"),
        ("-5%", "not a rate: '-5%'"),
        ("150%", "out of range: '150%'"),
        ("150", "out of range: '150'"),
        (False, "not a number: False"),
    ],
)
def test_repurchase_rate_invalid(value: Any, problem: str) -> None:
    assert malformed(item(item_repurchase_rate=value)) == f"item_repurchase_rate: {problem}"


# --- composite score -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4.0", 4.0), ("4.5", 4.5), (5, 5.0), (3.5, 3.5), ("", None), (None, None)],
)
def test_composite_score(value: Any, expected: float | None) -> None:
    assert normalize(with_score(value))["composite_score"] == expected


def test_composite_score_invalid() -> None:
    assert malformed(with_score("good")) == (
        "shop_info.score_info.composite_score: not a number: 'good'"
    )


# --- booleans ------------------------------------------------------------------------------

#: (typed field, block or None for top level, key in that block, path named in reasons)
BOOLEAN_SOURCES = [
    ("free_shipping", "delivery_info", "free_shipping", "delivery_info.free_shipping"),
    ("is_super_factory", "shop_info", "is_super_factory", "shop_info.is_super_factory"),
    ("is_powerful_seller", "shop_info", "is_powerful_seller", "shop_info.is_powerful_seller"),
    ("low_refund_rate", None, "low_refund_rate", "low_refund_rate"),
    ("one_piece_min_order", None, "one_piece_min_order", "one_piece_min_order"),
    ("ship_in_48h", None, "ship_in_48h", "ship_in_48h"),
]


BooleanSource = tuple[str, str | None, str, str]


def with_source(source: BooleanSource, value: Any) -> dict[str, Any]:
    """The reference item with one flag set (top-level ``ship_in_48h`` has no fallback)."""
    field, block, key, _ = source
    raw = item(**{key: value}) if block is None else with_block(block, **{key: value})
    if field == "ship_in_48h":
        raw["delivery_info"].pop("ship_in_48h")
    return raw


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("True", True),
        (" FALSE ", False),
        ("1", True),
        ("0", False),
        (1, True),
        (0, False),
        ("", None),
        (None, None),
    ],
)
@pytest.mark.parametrize("source", BOOLEAN_SOURCES)
def test_booleans(source: BooleanSource, value: Any, expected: bool | None) -> None:
    assert normalize(with_source(source, value))[source[0]] is expected


@pytest.mark.parametrize("source", BOOLEAN_SOURCES)
def test_booleans_missing(source: BooleanSource) -> None:
    assert normalize(with_source(source, ...))[source[0]] is None


@pytest.mark.parametrize(
    ("value", "shown"), [("yes", "'yes'"), (2, "2"), (1.0, "1.0"), ([], "[]"), ("2", "'2'")]
)
@pytest.mark.parametrize("source", BOOLEAN_SOURCES)
def test_booleans_invalid(source: BooleanSource, value: Any, shown: str) -> None:
    assert malformed(with_source(source, value)) == f"{source[3]}: not a boolean: {shown}"


@pytest.mark.parametrize("top", [..., None, ""])
def test_ship_in_48h_falls_back_to_delivery_info(top: Any) -> None:
    raw = item(ship_in_48h=top)
    raw["delivery_info"]["ship_in_48h"] = True
    assert normalize(raw)["ship_in_48h"] is True


def test_ship_in_48h_top_level_wins() -> None:
    raw = item(ship_in_48h=True)
    raw["delivery_info"]["ship_in_48h"] = False
    assert normalize(raw)["ship_in_48h"] is True


def test_ship_in_48h_fallback_invalid() -> None:
    raw = item(ship_in_48h=...)
    raw["delivery_info"]["ship_in_48h"] = "soon"
    assert malformed(raw) == "delivery_info.ship_in_48h: not a boolean: 'soon'"


# --- optional blocks -----------------------------------------------------------------------

BLOCK_FIELDS = {
    "price_info": ("sale_price", "origin_price"),
    "sale_info": ("sales_90d",),
    "delivery_info": ("free_shipping",),
    "shop_info": ("shop_years", "composite_score", "is_super_factory", "is_powerful_seller"),
}


@pytest.mark.parametrize("absent", [..., None])
@pytest.mark.parametrize("block", list(BLOCK_FIELDS))
def test_absent_block(block: str, absent: Any) -> None:
    typed = normalize(item(**{block: absent}))
    assert all(typed[name] is None for name in BLOCK_FIELDS[block])


def test_absent_score_info() -> None:
    for absent in (..., None):
        raw = with_block("shop_info", score_info=absent)
        assert normalize(raw)["composite_score"] is None


@pytest.mark.parametrize("wrong", ["x", ["a"], 3, True])
@pytest.mark.parametrize("block", list(BLOCK_FIELDS))
def test_block_of_wrong_type(block: str, wrong: Any) -> None:
    assert malformed(item(**{block: wrong})) == f"{block}: not an object: {wrong!r}"


def test_score_info_of_wrong_type() -> None:
    raw = with_block("shop_info", score_info="x")
    assert malformed(raw) == "shop_info.score_info: not an object: 'x'"


def test_translated_fields_absent_blocks() -> None:
    assert translated_fields(item(shop_info=None, delivery_info=...)) == {
        "title": REFERENCE_ITEM["title"]
    }


def test_translated_fields_block_of_wrong_type() -> None:
    with pytest.raises(MalformedItem, match=r"^shop_info: not an object: 'x'$"):
        translated_fields(item(shop_info="x"))


# --- descriptive and translated text -------------------------------------------------------


@pytest.mark.parametrize("field", ["product_url", "img", "currency", "category_path"])
@pytest.mark.parametrize("absent", [..., None])
def test_passthrough_absent(field: str, absent: Any) -> None:
    assert field not in normalize(item(**{field: absent}))


@pytest.mark.parametrize("field", ["product_url", "img", "currency"])
def test_passthrough_empty_string_is_absent(field: str) -> None:
    assert field not in normalize(item(**{field: ""}))


@pytest.mark.parametrize("field", ["product_url", "img", "currency"])
def test_passthrough_not_a_string(field: str) -> None:
    assert malformed(item(**{field: 5})) == f"{field}: not a string: 5"


def test_category_path_variants() -> None:
    assert normalize(item(category_path=[]))["category_path"] == []
    assert normalize(item(category_path=[54, "80"]))["category_path"] == ["54", "80"]
    assert malformed(item(category_path="54/80")) == "category_path: not a list: '54/80'"
    assert malformed(item(category_path=["54", None])) == (
        "category_path: not a list of strings: ['54', None]"
    )


@pytest.mark.parametrize("absent", [..., None, ""])
def test_title_absent(absent: Any) -> None:
    assert "title" not in translated_fields(item(title=absent))


def test_company_name_and_area_from_absent() -> None:
    raw = with_block("shop_info", company_name=...)
    raw["delivery_info"].pop("area_from")
    assert translated_fields(raw) == {"title": REFERENCE_ITEM["title"]}


def test_translated_fields_invalid() -> None:
    with pytest.raises(MalformedItem, match=r"^title: not a string: 3$"):
        translated_fields(item(title=3))
    with pytest.raises(MalformedItem, match=r"^shop_info.company_name: not a string: \[\]$"):
        translated_fields(with_block("shop_info", company_name=[]))
    with pytest.raises(MalformedItem, match=r"^delivery_info.area_from: not a list: '浙江'$"):
        translated_fields(with_block("delivery_info", area_from="浙江"))


@pytest.mark.parametrize(("raw", "reason"), [
    (item(title=3), "title: not a string: 3"),
    (with_block("shop_info", company_name={"zh": "x"}),
     "shop_info.company_name: not a string: {'zh': 'x'}"),
    (with_block("delivery_info", area_from="Zhejiang"),
     "delivery_info.area_from: not a list: 'Zhejiang'"),
])
def test_translated_text_of_the_wrong_type_rejects_the_item(raw: Any, reason: str) -> None:
    """Checked when the item is read, like every other stored value, never when it is stored."""
    product = ProductItem.from_raw(raw, CONTEXT)
    assert (product.item_id, product.typed, product.rejection) == (991188728585, None, reason)


# --- what MongoDB can store ---------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["x"] = {}
        inner = inner["x"]
    return top


@pytest.mark.parametrize(("extra", "reason"), [
    ({"orders": 2**63}, "item: an integer beyond MongoDB's 64 bits"),
    ({"sale_info": {"total": -(2**63) - 1}}, "item: an integer beyond MongoDB's 64 bits"),
    ({"note\u0000": 1}, "item: not storable: "),
    ({"title": "broken \ud800"}, "item: text that is not valid Unicode"),
    ({"description": "x" * MAX_RAW_BYTES}, "item: "),
    ({"extra": nested(MAX_RAW_DEPTH + 2)}, f"item: nested deeper than {MAX_RAW_DEPTH} levels"),
])
def test_items_mongodb_could_not_store_are_refused(extra: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedItem) as refused:
        normalize(item(**extra))
    assert refused.value.reason.startswith(reason)
    assert len(refused.value.reason) < 200


@pytest.mark.parametrize("extra", [
    {"$where": "1"}, {"price.cny": "1.00"}, {"orders": 2**63 - 1}, {"note": "a\u0000b"},
    {"extra": nested(MAX_RAW_DEPTH - 2)},
])
def test_what_mongodb_stores_as_received_is_kept(extra: dict[str, Any]) -> None:
    assert normalize(item(**extra))["item_id"] == 991188728585


def test_an_unstorable_item_renders_bounded() -> None:
    raw = item(description="x" * 2**20, orders=2**64, deep=nested(500))
    raw["note\u0000"] = "\ud800"
    text = rendered(raw)
    assert len(text) <= 16_384
    text.encode()  # valid Unicode: storable as a string
    assert "note" in text
    assert "\x00" not in text  # escaped, never the NUL itself


# --- items ---------------------------------------------------------------------------------


def test_query_context_is_frozen_and_hashable() -> None:
    with pytest.raises(FrozenInstanceError):
        CONTEXT.page = 4  # type: ignore[misc]
    same = QueryContext(1031922, "en", "sales", dict(CONTEXT.filters), 3, 7)
    assert same == CONTEXT
    assert hash(same) == hash(CONTEXT)


def test_product_item_round_trips_through_json() -> None:
    product = ProductItem.from_raw(REFERENCE_ITEM, CONTEXT)
    as_dict = ItemAdapter(product).asdict()
    assert json.loads(json.dumps(as_dict, ensure_ascii=False)) == as_dict
    assert as_dict == {
        "raw": REFERENCE_ITEM,
        "context": {
            "cat_id": 1031922,
            "language": "en",
            "sort": "sales",
            "filters": {"price_start": "1", "price_end": "9.5", "free_shipping": True},
            "page": 3,
            "position": 7,
        },
        "item_id": 991188728585,
        "typed": normalize(REFERENCE_ITEM),
        "rejection": None,
        "translated": translated_fields(REFERENCE_ITEM),
    }


def test_product_item_through_scrapy_feed_exporter() -> None:
    """What ``scrapy crawl -O items.jsonl`` does with an item."""
    output = io.BytesIO()
    exporter = JsonLinesItemExporter(output, ensure_ascii=False)
    exporter.start_exporting()
    exporter.export_item(ProductItem.from_raw(REFERENCE_ITEM, CONTEXT))
    exporter.export_item(ProductItem(raw={"item_id": "x"}, context=CONTEXT))
    exporter.finish_exporting()
    first, second = (json.loads(line) for line in output.getvalue().splitlines())
    assert first["raw"] == REFERENCE_ITEM
    assert first["context"]["filters"] == CONTEXT.filters
    assert first["typed"]["sales_90d"] == 100000
    assert second == {
        "raw": {"item_id": "x"},
        "context": ItemAdapter(CONTEXT).asdict(),
        "item_id": None,
        "typed": None,
        "rejection": None,
        "translated": None,
    }


def test_product_item_defaults() -> None:
    product = ProductItem(raw={"item_id": 1}, context=CONTEXT)
    assert (product.item_id, product.typed, product.rejection) == (None, None, None)
    assert ItemAdapter.is_item(product)


def test_from_raw_keeps_the_raw_dict_as_received() -> None:
    raw = item()
    product = ProductItem.from_raw(raw, CONTEXT)
    assert product.raw is raw
    assert product.context is CONTEXT
    assert product.item_id == 991188728585
    assert product.typed == normalize(raw)
    assert product.translated == translated_fields(raw)
    assert product.rejection is None


def test_from_raw_rejection_keeps_readable_item_id() -> None:
    product = ProductItem.from_raw(item(moq="lots"), CONTEXT)
    assert product.item_id == 991188728585
    assert product.typed is None
    assert product.rejection == "moq: not a number: 'lots'"


def test_from_raw_rejection_without_item_id() -> None:
    product = ProductItem.from_raw(item(item_id=...), CONTEXT)
    assert (product.item_id, product.typed, product.rejection) == (None, None, "item_id: missing")
