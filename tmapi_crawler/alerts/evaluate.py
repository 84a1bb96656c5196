"""Which of a crawl's changes each rule fires on, and the message that lists them.

Read from what the crawl left in MongoDB — its ``history`` documents (price moves, categories
left), the products it found first, its ``crawl_runs`` record — so a resumed crawl or a cluster's
finaliser sees the whole crawl, whichever process ran which part. Selection and formatting are
pure functions of those documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tmapi_crawler.alerts.rules import Rule
from tmapi_crawler.closing import FINISHED
from tmapi_crawler.storage.collections import CRAWL_RUNS, HISTORY, PRODUCTS
from tmapi_crawler.storage.history import AVAILABLE_IN, history_id

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

#: A message lists this many products at most, then says how many more there are; and stays
#: under this many characters (Telegram's limit is 4,096).
MAX_LINES: Final = 20
MAX_CHARS: Final = 3500
MAX_TITLE: Final = 60
#: Product ids per ``$in`` read.
_CHUNK: Final = 5000


@dataclass(frozen=True, slots=True)
class Change:
    """One thing a rule may fire on: a product's move in this crawl, or a gap in the crawl."""

    #: Unique among the crawl's changes of its kind: ``alerts_sent`` keys are made of it.
    key: str
    item_id: int | None = None
    old: float | None = None
    new: float | None = None
    #: The product's categories; for a vanishing, the categories it left.
    categories: tuple[int, ...] = ()
    title: str = ""
    link: str = ""
    #: What the line says besides the product (a category's gap, a finish reason).
    note: str = ""

    @property
    def pct(self) -> float | None:
        if self.old is None or self.new is None or self.old <= 0:
            return None
        return (self.new - self.old) / self.old * 100


@dataclass(slots=True)
class CrawlChanges:
    """What one crawl changed, as the rules read it."""

    crawl_id: str
    prices: list[Change] = field(default_factory=list)
    new: list[Change] = field(default_factory=list)
    vanished: list[Change] = field(default_factory=list)
    gaps: list[Change] = field(default_factory=list)


def _percent_at_least(change: Change, min_pct: float, sign: int) -> bool:
    pct = change.pct
    # Rounded: 10.0 % computed as 9.999999 is still 10 %.
    return pct is not None and sign * pct > 0 and round(sign * pct, 6) >= min_pct


def select(rule: Rule, changes: CrawlChanges) -> list[Change]:
    """The changes ``rule`` fires on, in the order its message lists them."""
    watched = [c for c in _candidates(rule, changes)
               if rule.kind == "incomplete" or rule.watches(c.item_id or 0, c.categories)]
    if rule.kind == "price_drop":
        assert rule.min_pct is not None
        hits = [c for c in watched if _percent_at_least(c, rule.min_pct, -1)]
        return sorted(hits, key=lambda c: (c.pct, c.item_id))
    if rule.kind == "price_rise":
        assert rule.min_pct is not None
        hits = [c for c in watched if _percent_at_least(c, rule.min_pct, 1)]
        return sorted(hits, key=lambda c: (-(c.pct or 0), c.item_id))
    if rule.kind == "below":
        assert rule.price is not None
        target = rule.price
        # Crossing to the target or under it: from above, or from no known price.
        hits = [c for c in watched if c.new is not None and c.new <= target
                and (c.old is None or c.old > target)]
        return sorted(hits, key=lambda c: (c.new, c.item_id))
    if rule.kind == "incomplete":
        return [c for c in watched if not rule.cat_id or not c.categories
                or rule.cat_id & set(c.categories)]
    return sorted(watched, key=lambda c: c.item_id or 0)


def _candidates(rule: Rule, changes: CrawlChanges) -> list[Change]:
    if rule.kind in ("price_drop", "price_rise"):
        return changes.prices
    if rule.kind == "below":
        return changes.prices + changes.new
    return {"new": changes.new, "vanished": changes.vanished,
            "incomplete": changes.gaps}[rule.kind]


# Reading a crawl's changes.


def _title(product: Mapping[str, Any]) -> str:
    titles = product.get("titles") or {}
    title = titles.get("en") or next(iter(titles.values()), "") if titles else ""
    return title if isinstance(title, str) else ""


async def _products(db: AsyncDatabase[dict[str, Any]],
                    ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    projection = {"titles": 1, "product_url": 1, "categories": 1, "price": 1}
    for start in range(0, len(ids), _CHUNK):
        async for product in db[PRODUCTS].find({"_id": {"$in": list(ids[start:start + _CHUNK])}},
                                               projection):
            found[product["_id"]] = product
    return found


def _about(product: Mapping[str, Any] | None) -> dict[str, Any]:
    product = product or {}
    return {"title": _title(product), "link": product.get("product_url") or "",
            "categories": tuple(product.get("categories") or ())}


async def read_changes(db: AsyncDatabase[dict[str, Any]], crawl_id: str,
                       kinds: Iterable[str]) -> CrawlChanges:
    """What the rules of ``kinds`` need of the crawl, and nothing more."""
    kinds = set(kinds)
    changes = CrawlChanges(crawl_id)
    moves: list[dict[str, Any]] = []
    if kinds & {"price_drop", "price_rise", "below", "vanished"}:
        wanted = [{f"changes.{name}": {"$exists": True}} for name, kind in (
            ("price", kinds & {"price_drop", "price_rise", "below"}),
            (AVAILABLE_IN, kinds & {"vanished"})) if kind]
        moves = await db[HISTORY].find({"crawl_id": crawl_id, "$or": wanted},
                                       {"item_id": 1, "changes": 1}).to_list()
    firsts: list[dict[str, Any]] = []
    if kinds & {"new", "below"}:
        firsts = await db[PRODUCTS].find(
            {"first_crawl_id": crawl_id},
            {"titles": 1, "product_url": 1, "categories": 1, "price": 1}).to_list()
    products = await _products(db, sorted({m["item_id"] for m in moves}))
    for move in moves:
        item_id = move["item_id"]
        about = _about(products.get(item_id))
        price = move["changes"].get("price")
        if price is not None:
            changes.prices.append(Change(move["_id"], item_id, price[0], price[1], **about))
        available = move["changes"].get(AVAILABLE_IN)
        if available is not None and (left := sorted(set(available[0]) - set(available[1]))):
            changes.vanished.append(Change(
                move["_id"], item_id, categories=tuple(left), title=about["title"],
                link=about["link"], note=f"gone from {', '.join(map(str, left))}"))
    for product in firsts:
        changes.new.append(Change(history_id(product["_id"], crawl_id), product["_id"], None,
                                  product.get("price"), **_about(product)))
    if "incomplete" in kinds:
        changes.gaps = gaps(await db[CRAWL_RUNS].find_one({"_id": crawl_id}) or {}, crawl_id)
    return changes


def gaps(run: Mapping[str, Any], crawl_id: str) -> list[Change]:
    """What a crawl could not read, from its ``crawl_runs`` record: a stop before the end
    (a budget spent, a 439, Ctrl-C), and each category it did not read whole."""
    found: list[Change] = []
    reason = run.get("finish_reason")
    if reason is not None and reason != FINISHED:
        found.append(Change(f"{crawl_id}:stopped:{reason}", note=f"stopped: {reason}"))
    incomplete = run.get("incomplete") or {}
    for cat_id, recorded in sorted(incomplete.items(), key=lambda kv: str(kv[0])):
        what = recorded if isinstance(recorded, Mapping) else {}
        reasons = ", ".join(map(str, what.get("reasons") or ())) or "not read whole"
        parts = [f"category {cat_id}: {reasons}"]
        if what.get("claimed") is not None:
            parts.append(f"{what.get('stored', 0)} of {what['claimed']} products stored")
        if what.get("unreached"):
            parts.append(f"{what['unreached']} unreached")
        categories = (int(cat_id),) if str(cat_id).isdigit() else ()
        found.append(Change(f"{crawl_id}:category:{cat_id}", categories=categories,
                            note="; ".join(parts)))
    if run.get("complete") is False and not incomplete and not found:
        found.append(Change(f"{crawl_id}:incomplete", note="not every category was read whole"))
    return found


# The message.


def _price(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def line(change: Change) -> str:
    """One product (or gap) of a message: id, title, old → new price, %, link."""
    if change.item_id is None:
        return change.note
    title = change.title if len(change.title) <= MAX_TITLE else change.title[:MAX_TITLE - 1] + "…"
    parts = [str(change.item_id)]
    if title:
        parts.append(title)
    if change.note:
        parts.append(change.note)
    elif change.old is None:
        parts.append(f"new at {_price(change.new)}")
    else:
        pct = change.pct
        parts.append(f"{_price(change.old)} → {_price(change.new)}"
                     + (f" ({pct:+.1f}%)" if pct is not None else ""))
    if change.link:
        parts.append(change.link)
    return " · ".join(parts)


def message(rule: Rule, crawl_id: str, changes: Sequence[Change]) -> tuple[str, str]:
    """The title and body of ``rule``'s one message for the crawl, cut to a readable length."""
    noun = "problem" if rule.kind == "incomplete" else "product"
    count = f"{len(changes)} {noun}{'s' if len(changes) != 1 else ''}"
    title = f"tmapi: {rule.describe()}: {count}"
    lines: list[str] = []
    size = 0
    for change in changes[:MAX_LINES]:
        text = line(change)
        if size + len(text) + 1 > MAX_CHARS - 80:
            break
        lines.append(text)
        size += len(text) + 1
    if rest := len(changes) - len(lines):
        lines.append(f"… and {rest} more")
    lines.append(f"crawl {crawl_id}")
    return title, "\n".join(lines)
