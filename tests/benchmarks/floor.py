"""The floor: the project's work without a framework — aiohttp, normalise, bulk upserts.

Fetches the same pages with the same concurrency, normalises every product with the project's
own code and writes the same documents with the same batched upserts. Whatever the project
spends above this is the price of Scrapy.

``--one-query`` is the floor of one large query (B11): page 1 alone (any client must read its
``total_count`` before it knows the pages), then every other page with ``--concurrency`` in
flight; with ``--batch-size 1`` each page's products are one bulk upsert as the page arrives.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient, UpdateOne

from tmapi_crawler import api
from tmapi_crawler.items import ProductItem, QueryContext
from tmapi_crawler.storage.documents import batch_now, updates_by_id


async def crawl(args: argparse.Namespace) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo_uri)
    products = client[args.database]["products"]
    pending: list[ProductItem] = []
    stored = 0
    semaphore = asyncio.Semaphore(args.concurrency)

    async def flush() -> None:
        nonlocal pending, stored
        batch, pending = pending, []
        updates = updates_by_id(batch, "floor", batch_now())
        await products.bulk_write(
            [UpdateOne({"_id": i}, u, upsert=True) for i, u in updates.items()], ordered=False
        )
        stored += len(batch)

    async def page(session: aiohttp.ClientSession, cat_id: int, number: int) -> int:
        params = {"apiToken": args.token, "cat_id": cat_id, "page": number,
                  "page_size": args.page_size}
        async with semaphore, session.get(args.base_url + api.PATH, params=params) as answer:
            data = (await answer.json())["data"]
        for position, raw in enumerate(data["items"]):
            context = QueryContext(cat_id, "en", "default", {}, number, position)
            pending.append(ProductItem.from_raw(raw, context))
        if len(pending) >= args.batch_size:
            await flush()
        return int(data["total_count"])

    async def one_query(session: aiohttp.ClientSession, cat_id: int) -> None:
        total = await page(session, cat_id, 1)
        await asyncio.gather(*(page(session, cat_id, number)
                               for number in range(2, -(-total // args.page_size) + 1)))

    async with aiohttp.ClientSession() as session:
        if args.one_query:
            await asyncio.gather(*(one_query(session, cat_id) for cat_id in args.cat_ids))
        else:
            await asyncio.gather(*(
                page(session, cat_id, number)
                for cat_id in args.cat_ids for number in range(1, args.pages + 1)
            ))
    if pending:
        await flush()
    await client.close()
    return stored


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--cat-ids", type=lambda s: [int(c) for c in s.split(",")], required=True)
    parser.add_argument("--pages", type=int, default=0)
    parser.add_argument("--one-query", action="store_true")
    parser.add_argument("--page-size", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=500)
    print(asyncio.run(crawl(parser.parse_args())))


if __name__ == "__main__":
    main()
