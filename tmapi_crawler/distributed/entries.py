"""What the shared queue holds: a page spec and its priority, nothing else.

A queued entry is ``{"page": PageContext.to_dict(), "priority": n}`` as JSON. The worker that
pops it rebuilds the request itself, with its spider's ``page_request`` and so from its own
``TMAPI_BASE_URL``: no URL, meta, headers, proxy or callback is ever taken from Redis, so
whoever can write to Redis cannot make a worker send its token anywhere else. An entry that is
not exactly that — other keys, values of the wrong type, a query the plan would refuse — is
refused: it goes to the failed list with its reason, for people to inspect, and is counted.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Final

from tmapi_crawler.frontier.context import PageContext
from tmapi_crawler.plan import PlanError, plan_from_arguments

#: Longer entries are refused unread; a real one is a few hundred bytes.
MAX_ENTRY_BYTES: Final = 8192
#: Priorities the spider uses are small; anything far outside is not ours.
MAX_PRIORITY: Final = 1000
_KEYS: Final = frozenset({"page", "priority"})


class RefusedEntry(ValueError):
    """A queued entry this worker will not turn into a request; the message says why."""


def encode(context: PageContext, priority: int) -> str:
    return json.dumps({"page": context.to_dict(), "priority": priority},
                      ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def decode(data: bytes | str, *, known: bool = True) -> tuple[PageContext, int]:
    """The page spec and priority of an entry, or ``RefusedEntry``.

    ``known`` false: the crawl's dupefilter never saw the entry's id, so none of its workers
    queued it.
    """
    if not known:
        raise RefusedEntry("not queued by this crawl")
    if len(data) > MAX_ENTRY_BYTES:
        raise RefusedEntry(f"entry of {len(data)} bytes (at most {MAX_ENTRY_BYTES})")
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RefusedEntry("not JSON") from None
    if not isinstance(entry, dict) or set(entry) != _KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise RefusedEntry(f"expected exactly the keys page and priority, found {keys}")
    priority = entry["priority"]
    if type(priority) is not int or abs(priority) > MAX_PRIORITY:
        raise RefusedEntry(f"priority {priority!r} is not an integer within ±{MAX_PRIORITY}")
    page = entry["page"]
    try:
        context = PageContext.from_dict(page)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RefusedEntry(f"not a page spec ({type(exc).__name__})") from None
    # Exactly what this code would have queued: no extra key, every value of its own type.
    if context.to_dict() != page:
        raise RefusedEntry("not a page spec in its canonical form")
    if context.page < 1 or context.last < 1:
        raise RefusedEntry(f"page {context.page} of {context.last}: pages start at 1")
    problem = _query_problem(json.dumps(page["query"], sort_keys=True))
    if problem is not None:
        raise RefusedEntry(problem)
    return context, priority


@lru_cache(maxsize=4096)
def _query_problem(query_json: str) -> str | None:
    """Why a query would be refused, if it would: the same validation as the user's arguments,
    and nothing changed by it. Cached: every page of a query carries the same one."""
    query: dict[str, Any] = json.loads(query_json)
    arguments = {name: str(value).lower() if isinstance(value, bool) else str(value)
                 for name, value in query.items()}
    try:
        plan = plan_from_arguments(arguments)
    except PlanError as exc:
        return f"query refused: {exc}"
    if [q.to_dict() for q in plan.queries] != [query]:
        return "query not in its canonical form"
    return None
