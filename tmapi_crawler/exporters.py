"""Feed exporters that write products, one per record, from the pages the spider yields.

The spider yields one ``ProductPage`` per API page (see ``items.py``); ``-O items.jsonl`` and
the other feed formats still get one record per product, with its query context.
"""

from __future__ import annotations

from typing import Any

from scrapy import exporters

from tmapi_crawler.items import ProductPage


class PageFlattening:
    """Export each product of a page as its own item; other items as they are."""

    def export_item(self, item: Any) -> None:
        if isinstance(item, ProductPage):
            for product in item.products:
                super().export_item(product)  # type: ignore[misc]
        else:
            super().export_item(item)  # type: ignore[misc]


class JsonLinesExporter(PageFlattening, exporters.JsonLinesItemExporter):
    pass


class JsonExporter(PageFlattening, exporters.JsonItemExporter):
    pass


class CsvExporter(PageFlattening, exporters.CsvItemExporter):
    pass


class XmlExporter(PageFlattening, exporters.XmlItemExporter):
    pass
