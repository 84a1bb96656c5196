"""The local web app of ``scrapy serve``: the catalogue, a product, movers and crawls.

Read-only and offline: every read goes through ``storage.queries`` and
``storage.change_queries`` (validated, whitelisted; a bad parameter is a 400 before MongoDB is
asked anything), and every asset is served from ``web/static``. Each page has a JSON twin
under ``/api`` and each list downloads as CSV or XLSX (``?format=csv|xlsx``). Nothing here knows
the API token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from bson import ObjectId
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tmapi_crawler.storage import change_queries, queries
from tmapi_crawler.storage.queries import QueryError
from tmapi_crawler.web import tables

HERE: Final = Path(__file__).parent
#: Characters that are only ever query syntax: a search is plain text (titles, shops, ids).
_SYNTAX: Final = frozenset("${}[]\\^|*+?")
_TEMPLATES: Final = Environment(loader=FileSystemLoader(HERE / "templates"),
                                autoescape=select_autoescape(), auto_reload=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(type(value).__name__)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return to_json(content).encode()


#: JSON inside a <script> element: nothing in it can close the element.
_TEMPLATES.filters["tojson_safe"] = lambda v: Markup(to_json(v).replace("<", "\\u003c"))
_TEMPLATES.globals["max_rows"] = tables.MAX_ROWS


def link(params: Mapping[str, str], **changes: Any) -> str:
    """This page's query string with ``changes`` (None removes a parameter)."""
    merged = {**params, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v is not None})


_TEMPLATES.globals["link"] = link
_TEMPLATES.filters["when"] = lambda v: f"{v:%Y-%m-%d %H:%M} UTC" if isinstance(v, datetime) \
    else "—"


def params_of(request: Request) -> dict[str, str]:
    """The query string as one value per name; repeated names and query syntax are refused."""
    items = request.query_params.multi_items()
    params = dict(items)
    if len(params) != len(items):
        raise QueryError("a parameter is given twice")
    if _SYNTAX & set(params.get("q", "")):
        raise QueryError("q: a search is plain text (no $ { } [ ] \\ ^ | * + ?)")
    return params


def db_of(request: Request) -> Any:
    return request.app.state.db


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    page = _TEMPLATES.get_template(name).render(request=request, **context)
    return HTMLResponse(page, status_code=status)


def _format(params: Mapping[str, str]) -> str:
    return queries.parse_choice(params, "format", ("html", "csv", "xlsx"), "html")


async def catalogue(request: Request) -> Response:
    params = params_of(request)
    kind = _format(params)
    query = queries.ProductQuery.from_params(params)
    db = db_of(request)
    if kind != "html":
        page = await queries.find_products(db, query, limit=tables.MAX_ROWS)
        rows = tables.product_rows(page.rows)
        return tables.download(rows, tables.PRODUCT_COLUMNS, "products", kind)
    page = await queries.find_products(db, query)
    if request.url.path.startswith("/api/"):
        return JSON({"total": page.total, "more_than": page.more_than_limit and queries.COUNT_LIMIT,
                     "page": query.page, "per_page": query.per_page, "products": page.rows})
    return render(request, "catalogue.html", query=query, page=page,
                  rows=tables.product_rows(page.rows), params=params,
                  categories=await queries.categories(db), flags=queries.FLAGS,
                  sorts=list(queries.SORTS), count_limit=queries.COUNT_LIMIT)


async def product(request: Request) -> Response:
    params = params_of(request)
    kind = _format(params)
    raw = request.path_params["item_id"]
    if not queries.ITEM_ID.fullmatch(raw) or int(raw) >= 2**63:
        raise QueryError("item_id: expected the product's number")
    found = await queries.get_product(db_of(request), int(raw))
    if found is None:
        raise HTTPException(404, f"No product {raw} in this database.")
    steps = queries.price_steps(found)
    if kind != "html":
        return tables.download(steps, tables.STEP_COLUMNS, f"price-history-{raw}", kind)
    if request.url.path.startswith("/api/"):
        return JSON({**found, "price_stats": found.get("price_stats"), "steps": steps})
    return render(request, "product.html", product=found, steps=steps,
                  listings=tables.listings(found))


async def movers(request: Request) -> Response:
    params = params_of(request)
    kind = _format(params)
    query = change_queries.MoversQuery.from_params(params)
    db = db_of(request)
    found = await change_queries.movers(db, query)
    if kind != "html":
        which = queries.parse_choice(params, "kind", change_queries.MOVER_KINDS, "drops")
        return tables.download(tables.mover_rows(found.get(which, []), which), tables.MOVER_COLUMNS,
                         f"movers-{which}", kind)
    if request.url.path.startswith("/api/"):
        return JSON(found)
    return render(request, "movers.html", query=query, found=found, params=params,
                  categories=await queries.categories(db),
                  lists={k: tables.mover_rows(found[k], k) for k in change_queries.MOVER_KINDS
                         if k in found})


async def crawls(request: Request) -> Response:
    params = params_of(request)
    kind = _format(params)
    if set(params) - {"format"}:
        raise QueryError(f"unknown parameter: {sorted(set(params) - {'format'})[0][:40]}")
    runs = await queries.crawls(db_of(request))
    rows = tables.crawl_rows(runs)
    if kind != "html":
        return tables.download(rows, tables.CRAWL_COLUMNS, "crawls", kind)
    if request.url.path.startswith("/api/"):
        return JSON({"crawls": runs})
    return render(request, "crawls.html", rows=rows, runs=runs)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def bad_request(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSON({"error": str(exc)}, status_code=400)
    return render(request, "error.html", 400, title="Bad request", message=str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" \
        else "There is no such page."
    if _wants_json(request):
        return JSON({"error": message}, status_code=exc.status_code)
    return render(request, "error.html", exc.status_code, title=f"Error {exc.status_code}",
                  message=message)


def create_app(uri: str, database: str,
               event_listeners: Sequence[CommandListener] = ()) -> Starlette:
    """The app over ``database`` at ``uri`` (one client, opened with the app, closed with it)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, tz_aware=True, appname="tmapi-crawler-web", serverSelectionTimeoutMS=5000,
            event_listeners=list(event_listeners))
        app.state.db = client[database]
        try:
            yield
        finally:
            await client.close()

    routes = [
        Route("/", catalogue, name="catalogue"),
        Route("/api/products", catalogue),
        Route("/products/{item_id}", product, name="product"),
        Route("/api/products/{item_id}", product),
        Route("/movers", movers, name="movers"),
        Route("/api/movers", movers),
        Route("/crawls", crawls, name="crawls"),
        Route("/api/crawls", crawls),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={QueryError: bad_request, HTTPException: http_error})
