"""What the frontier remembers between answers, behind an interface a shared store can serve.

Every operation is one atomic step that Redis offers as a command (or a few lines of Lua):
``claim`` is ``SET NX``, ``add`` is ``INCRBY``, ``add_ids`` is ``SADD``, ``raise_to`` and
``lower_to`` a get-and-set of a maximum or minimum, ``forget`` is ``DEL``. So several workers
can share one state and still decide each thing once. The frontier keeps little per query (a
few numbers and the ids of its last pages) and forgets it when the query is done; only the
claims that a query was started stay, one per query.

A page is decided through ``for_page``: a state shared by workers remembers each step under
the page, so a page decided again — its worker died after deciding it, before what it asked
for was queued — takes every step as it did the first time, and asks for the same pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


class StateLost(Exception):
    """A shared state is gone (Redis lost the cluster crawl): no decision can be taken on it.
    The page being decided is still paid for: its caller keeps its products."""


@runtime_checkable
class FrontierState(Protocol):
    async def claim(self, key: str) -> bool:
        """Mark ``key`` taken; True only for the first caller."""

    async def get(self, key: str) -> int | None:
        """A number kept under ``key`` (a claim reads as 1); None if there is none."""

    async def add(self, key: str, amount: int) -> int:
        """Add to a counter (missing: 0) and return its new value."""

    async def raise_to(self, key: str, value: int) -> int | None:
        """Keep the larger of the stored value and ``value``; return the value before."""

    async def lower_to(self, key: str, value: int) -> int | None:
        """Keep the smaller of the stored value and ``value``; return the value before."""

    async def add_ids(self, key: str, ids: Iterable[int]) -> int:
        """Add ids to the set under ``key``; return how many were not in it."""

    async def forget(self, *keys: str) -> None:
        """Drop keys (numbers, claims or sets); missing ones are ignored."""

    def for_page(self, page: str) -> FrontierState:
        """The state as one decision about ``page`` (``PageContext.key``) sees it."""

    @property
    def replayed(self) -> bool:
        """Whether a step of this view answered from an earlier decision of its page."""


class MemoryState:
    """The state of one process: dictionaries, which is all a single crawl needs."""

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}
        self._sets: dict[str, set[int]] = {}

    async def claim(self, key: str) -> bool:
        if key in self._numbers:
            return False
        self._numbers[key] = 1
        return True

    async def get(self, key: str) -> int | None:
        return self._numbers.get(key)

    async def add(self, key: str, amount: int) -> int:
        value = self._numbers[key] = self._numbers.get(key, 0) + amount
        return value

    async def raise_to(self, key: str, value: int) -> int | None:
        before = self._numbers.get(key)
        if before is None or value > before:
            self._numbers[key] = value
        return before

    async def lower_to(self, key: str, value: int) -> int | None:
        before = self._numbers.get(key)
        if before is None or value < before:
            self._numbers[key] = value
        return before

    async def add_ids(self, key: str, ids: Iterable[int]) -> int:
        known = self._sets.setdefault(key, set())
        before = len(known)
        known.update(ids)
        return len(known) - before

    async def forget(self, *keys: str) -> None:
        for key in keys:
            self._numbers.pop(key, None)
            self._sets.pop(key, None)

    def for_page(self, page: str) -> MemoryState:
        """One process decides each page once: nothing to remember."""
        return self

    @property
    def replayed(self) -> bool:
        return False

    def footprint(self) -> tuple[int, int]:
        """How much is kept: (keys, ids in sets), to check that memory stays bounded."""
        return len(self._numbers) + len(self._sets), sum(map(len, self._sets.values()))
