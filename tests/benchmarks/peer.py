"""The peers tmapi-crawler is measured against, as a Scrapy user would first write them.

``PeerSpider`` requests the same pages as the project (token in the URL, as the API's
examples do) and yields each product as a dict. ``MongoPipeline`` is the item pipeline of
Scrapy's documentation ("Write items to MongoDB"): one ``insert_one`` per item. Without the
pipeline the spider is "bare Scrapy": same pages parsed, items discarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import pymongo
import scrapy
from itemadapter import ItemAdapter

from tmapi_crawler import api


class PeerSpider(scrapy.Spider):
    name = "peer"

    def __init__(self, base_url: str, token: str, cat_ids: str, page_size: str, pages: str,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url
        self.token = token
        self.cat_ids = [int(c) for c in cat_ids.split(",")]
        self.page_size = int(page_size)
        self.pages = int(pages)

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for cat_id in self.cat_ids:
            for page in range(1, self.pages + 1):
                query = {"apiToken": self.token, "cat_id": cat_id, "page": page,
                         "page_size": self.page_size}
                yield scrapy.Request(f"{self.base_url}{api.PATH}?{urlencode(query)}")

    def parse(self, response: scrapy.http.TextResponse) -> Iterator[dict[str, Any]]:
        yield from response.json()["data"]["items"]


class MongoPipeline:
    collection_name = "scrapy_items"

    def __init__(self, mongo_uri: str, mongo_db: str) -> None:
        self.mongo_uri = mongo_uri
        self.mongo_db = mongo_db

    @classmethod
    def from_crawler(cls, crawler: Any) -> MongoPipeline:
        return cls(crawler.settings.get("MONGO_URI"), crawler.settings.get("MONGO_DATABASE"))

    def open_spider(self) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo_uri)
        self.db = self.client[self.mongo_db]

    def close_spider(self) -> None:
        self.client.close()

    def process_item(self, item: Any) -> Any:
        self.db[self.collection_name].insert_one(ItemAdapter(item).asdict())
        return item
