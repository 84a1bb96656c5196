"""A sandbox product and the item JSON the API serves for it, with the price and sales texts.

The product is what filtering and sorting need; everything else in an item is derived from its
digest when the item is encoded, once per language.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, NamedTuple

from tmapi_crawler.sandbox.words import (
    ADJECTIVES,
    AREA_JSON,
    AREAS,
    BRANDS,
    COLUMN,
    COMPANIES,
    NOUNS,
    TITLE_PARTS,
)

_MOQS = ("1", "1", "1", "2", "3", "5", "10", "20", "50", "100")
MISSING_ITEM_ID = "missing_item_id"
BAD_PRICE = "bad_price"
_JSON_BOOL = ("false", "true")


class Product(NamedTuple):
    """What filtering and sorting need; the rest of the item is derived from `digest` on demand.

    A NamedTuple because 50,000 of them must be built in a fraction of a second.
    """

    item_id: int
    origin_cat: int
    position: int
    digest: bytes
    price_cents: int
    sales: int
    new_arrival: bool
    support_dropshipping: bool
    free_shipping: bool
    is_super_factory: bool
    malformed: str  # "", MISSING_ITEM_ID or BAD_PRICE
    half_fen: bool = False  # priced half a fen above price_cents, in three decimals (9.995)


def format_price(cents: int) -> str:
    """Prices are strings with two decimals, as the reference shows ("0.60")."""
    return f"{cents // 100}.{cents % 100:02d}"


def format_sales(sales: int) -> str:
    """1688's coarse 90-day sales figure: "350", "1.2万+", "100000+" or "" for none."""
    if sales <= 0:
        return ""
    if sales < 10_000:
        return str(sales)
    if sales < 100_000:
        thousands = sales // 1000
        return f"{thousands // 10}.{thousands % 10}万+".replace(".0万", "万")
    return "100000+"


def sales_value(text: str) -> int:
    """The number a sales figure stands for (its lower bound); the inverse of `format_sales`."""
    if not text:
        return 0
    if text.endswith("万+"):
        return int(Decimal(text[:-2]) * 10_000)
    return int(text.rstrip("+"))


def item_json(product: Product, language: str) -> str:
    """The product as the API serves it in `language`, already encoded.

    Written as one template rather than `json.dumps` of a dict because it is several times faster
    and the sandbox must serve thousands of pages a second; `build_item` parses this text, so
    the layout (key order included, as in the reference's example item) lives here only. Text
    comes from tables checked at import time (sandbox/words.py) to need no JSON escaping.
    """
    d = product.digest
    column = COLUMN[language]
    first = d[23] % len(ADJECTIVES)
    second = (first + 1 + d[24] % (len(ADJECTIVES) - 1)) % len(ADJECTIVES)
    before, after = TITLE_PARTS[column][(first * len(ADJECTIVES) + second) * len(NOUNS)
                                        + d[25] % len(NOUNS)]
    area = d[21] % len(AREAS)
    company = COMPANIES[column][area * len(BRANDS) + d[22] % len(BRANDS)]
    price = "abc" if product.malformed == BAD_PRICE else format_price(product.price_cents)
    if product.half_fen and product.malformed != BAD_PRICE:
        price += "5"
    ship_in_48h = _JSON_BOOL[d[7] < 128]
    moq = _MOQS[d[9] % len(_MOQS)]
    if product.malformed == MISSING_ITEM_ID:
        head = '{"product_url":""'
    else:
        item_id = product.item_id
        head = f'{{"item_id":{item_id},"product_url":"https://detail.1688.com/offer/{item_id}.html"'
    # Each optional block is missing ~5 % of the time (byte < 13 of 256).
    price_info = sale_info = delivery_info = score_info = ""
    if d[17] >= 13:
        origin_price = (
            format_price(product.price_cents * (105 + d[11] % 75) // 100) if d[10] < 102 else ""
        )
        price_info = (f',"price_info":{{"price":"{price}","sale_price":"{price}",'
                      f'"origin_price":"{origin_price}"}}')
    if d[18] >= 13:
        sale_info = f',"sale_info":{{"sale_quantity_90days":"{format_sales(product.sales)}"}}'
    if d[20] >= 13:
        delivery_info = (f',"delivery_info":{{"area_from":{AREA_JSON[column][area]},'
                         f'"free_shipping":{_JSON_BOOL[product.free_shipping]},'
                         f'"ship_in_48h":{ship_in_48h}}}')
    if d[19] >= 13:
        score_info = f',"score_info":{{"composite_score":"{3 + d[16] % 21 / 10:.1f}"}}'
    repurchase = "" if d[14] < 77 else f"{5 + d[14] % 70}%"
    return (
        f'{head},"title":"{before}{1000 + int.from_bytes(d[26:28]) % 9000}{after}",'
        f'"img":"https://cbu01.alicdn.com/img/ibank/O1CN01{d[37:48].hex()}_!!'
        f'{2_200_000_000_000 + int.from_bytes(d[32:37]) % 10**11}-0-cib.jpg",'
        f'"category_path":["{10 + d[31] % 90}","{product.origin_cat}"],'
        f'"price":"{price}"{price_info},"currency":"CNY","moq":"{moq}","quantity_begin":"{moq}"'
        f'{sale_info}{delivery_info},"shop_info":{{"company_name":"{company}",'
        f'"is_powerful_seller":{_JSON_BOOL[d[6] < 64]},'
        f'"is_super_factory":{_JSON_BOOL[product.is_super_factory]},'
        f'"shop_years":{1 + d[15] % 15}{score_info}}},'
        f'"item_repurchase_rate":"{repurchase}","low_refund_rate":{_JSON_BOOL[d[8] < 77]},'
        f'"ship_in_48h":{ship_in_48h},"one_piece_min_order":{_JSON_BOOL[moq == "1"]}}}'
    )


def build_item(product: Product, language: str) -> dict[str, Any]:
    """The product as a dict, exactly as a client decodes it from an answer."""
    item: dict[str, Any] = json.loads(item_json(product, language))
    return item
