"""Lists as rows of plain values: what a page's table shows is what its CSV and XLSX hold.

A download is built from the same rows as the page (one function per list), so "the CSV equals
the page" holds by construction; CSV is UTF-8 with a BOM (Excel then reads Chinese titles
right), XLSX is written by openpyxl in write-only mode (rows streamed, not held as cells).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from openpyxl import Workbook
from starlette.responses import Response

#: Rows a download holds at most (the list's first rows, in its order).
MAX_ROWS: Final = 10_000
#: Title and shop name: the first language crawled in this order.
_LANGUAGE_ORDER: Final = ("en", "zh", "ru", "vi", "ja", "ko")

PRODUCT_COLUMNS: Final = ("item_id", "title", "shop", "price", "sale_price", "sales_90d",
                          "moq", "last_change_pct", "categories", "vanished_from",
                          "first_seen", "last_seen", "url")
STEP_COLUMNS: Final = ("at", "price", "sale_price", "sales_90d")
MOVER_COLUMNS: Final = ("item_id", "title", "kind", "from", "to", "change_cny", "change_pct",
                        "price", "at")
CRAWL_COLUMNS: Final = ("crawl_id", "started_at", "finished_at", "finish_reason", "status",
                        "calls", "pages", "products_seen", "new", "changed", "vanished",
                        "complete", "incomplete")


def first_language(texts: Mapping[str, Any] | None) -> str:
    texts = texts or {}
    for language in (*_LANGUAGE_ORDER, *texts):
        if texts.get(language):
            return str(texts[language])
    return ""


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else ""


def _ids(values: Iterable[Any]) -> str:
    return " ".join(str(v) for v in values)


def product_rows(products: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for p in products:
        change = (p.get("price_stats") or {}).get("last_change") or {}
        rows.append({
            "item_id": p["_id"], "title": first_language(p.get("titles")),
            "shop": first_language(p.get("company_names")),
            "price": p.get("price"), "sale_price": p.get("sale_price"),
            "sales_90d": p.get("sales_90d"), "moq": p.get("moq"),
            "last_change_pct": change.get("pct"),
            "categories": _ids(p.get("categories") or ()),
            "vanished_from": _ids(p.get("vanished") or {}),
            "first_seen": _when(p.get("first_seen")), "last_seen": _when(p.get("last_seen")),
            "url": p.get("product_url") or f"https://detail.1688.com/offer/{p['_id']}.html",
        })
    return rows


def mover_rows(found: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    rows = []
    for m in found:
        product = m.get("product") or m
        item_id = m["_id"]
        if kind in ("drops", "rises"):
            moved = {"from": m["from"], "to": m["to"], "change_cny": round(m["change"], 2),
                     "change_pct": round(m["pct"], 2), "at": _when(m["at"])}
        elif kind == "vanished":
            moved = {"from": _ids(m["from"] or ()), "to": _ids(m["to"] or ()),
                     "change_cny": None, "change_pct": None, "at": _when(m["at"])}
        else:
            moved = {"from": None, "to": None, "change_cny": None, "change_pct": None,
                     "at": _when(product.get("first_seen"))}
        rows.append({"item_id": item_id, "title": first_language(product.get("titles")),
                     "kind": kind, **moved, "price": product.get("price")})
    return rows


def crawl_rows(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        counts, cost = run.get("counts") or {}, run.get("cost") or {}
        rows.append({
            "crawl_id": run["_id"], "started_at": _when(run.get("started_at")),
            "finished_at": _when(run.get("finished_at")),
            "finish_reason": run.get("finish_reason"), "status": run.get("status"),
            "calls": cost.get("calls"), "pages": counts.get("pages"),
            "products_seen": counts.get("products_seen"), "new": counts.get("new"),
            "changed": counts.get("changed"), "vanished": counts.get("vanished"),
            "complete": _completeness(run, "complete"),
            "incomplete": _completeness(run, "incomplete"),
        })
    return rows


def _completeness(run: Mapping[str, Any], name: str) -> str:
    """Categories the crawl recorded as (in)complete; crawls before that record say so."""
    if name not in run:
        return "not recorded"
    value = run[name]
    return _ids(value) if isinstance(value, list | dict) else str(value)


def listings(product: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each category the product is listed in: the last crawl that saw it there, or gone."""
    seen, gone = product.get("seen_in") or {}, product.get("vanished") or {}
    return [{"category": c, "seen_by": seen.get(str(c)), "vanished": gone.get(str(c))}
            for c in product.get("categories") or ()]


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return b"\xef\xbb\xbf" + out.getvalue().encode()


def xlsx_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    book = Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(list(columns))
    for row in rows:
        sheet.append([_cell(row.get(c)) for c in columns])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return _when(value)
    return "" if value is None else value


def download(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], name: str,
             kind: str) -> Response:
    if kind == "csv":
        body, media = csv_bytes(rows, columns), "text/csv; charset=utf-8"
    else:
        body = xlsx_bytes(rows, columns)
        media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{name}.{kind}"'})
