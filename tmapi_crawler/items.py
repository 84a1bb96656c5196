"""What the spider yields: pages of products, each product as the API sent it, where it was
seen, and its typed values.

Plain dataclasses, so ``ItemAdapter`` and Scrapy's feed exports handle them without Scrapy's
``Item`` machinery, and every value stays JSON-friendly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tmapi_crawler.normalize import normalize, rendered, translated_fields
from tmapi_crawler.scalars import MalformedItem, parse_item_id


@dataclass(frozen=True, slots=True)
class QueryContext:
    """Where a product was seen: the query and its place in the answer.

    The same product appears under many queries (sorts, languages, price ranges); the context is
    what tells those sightings apart, e.g. for ranking by position under a sort.
    """

    cat_id: int
    language: str
    sort: str
    #: Only the filters that were set: ``price_start``/``price_end`` as the strings sent,
    #: ``new_arrival``/``support_dropshipping``/``free_shipping``/``is_super_factory`` as bools.
    #: Left out of the hash so the context stays hashable despite the dict.
    filters: dict[str, str | bool] = field(hash=False)
    page: int
    #: 0-based index within the page.
    position: int


@dataclass(slots=True)
class ProductItem:
    """One product sighting; ``raw`` is kept verbatim so normalisation can be redone later."""

    raw: dict[str, Any]
    context: QueryContext
    item_id: int | None = None
    typed: dict[str, Any] | None = None
    #: Why normalisation refused the item (a ``MalformedItem`` message); None when it did not.
    rejection: str | None = None
    #: The text the API translated into the query's language (``normalize.translated_fields``).
    translated: dict[str, Any] | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], context: QueryContext) -> ProductItem:
        """Build a normalised item; a malformed one is kept, with its rejection, not dropped.

        Keeping rejected items lets a pipeline count and store them for inspection. Their
        ``item_id`` is still filled when that field alone is readable. Every value that will be
        stored is checked here, one item at a time, so that storage never meets a value it
        cannot write.
        """
        if type(raw) is not dict:
            if not isinstance(raw, Mapping):
                return cls({"value": raw}, context, None, None,
                           f"item: not an object: {rendered(raw)[:60]}")
            raw = dict(raw)
        try:
            typed = normalize(raw)
            translated = translated_fields(raw)
        except MalformedItem as error:
            return cls(raw, context, _readable_item_id(raw), None, error.reason)
        return cls(raw, context, typed["item_id"], typed, translated=translated)


def _readable_item_id(raw: Mapping[str, Any]) -> int | None:
    """The item id alone, when the rest of the item is unreadable."""
    try:
        return parse_item_id(raw.get("item_id"))
    except MalformedItem:
        return None


@dataclass(slots=True)
class ProductPage:
    """The products of one answered page: the unit that travels through Scrapy's item path.

    Scrapy spends more per item (spider-middleware layers, a task, signals, a log record) than
    normalising and storing a product costs; moving pages instead divides that by the page
    size (BENCHMARKS.md, B3). Feed exports still write one record per product
    (``tmapi_crawler.exporters``); item pipelines see pages.
    """

    products: list[ProductItem]
    #: The page's resume-ledger document (``storage.ledger``), written once its products are.
    ledger: dict[str, Any] | None = None
