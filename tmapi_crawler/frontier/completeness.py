"""What a query could not read: the facts a crawl's record of completeness is made of.

The frontier reports a ``Loss`` in its ``Decision`` the moment it knows part of a category
will not be read (a stale stop, a part no split reaches); the transport's give-ups and the
crawl's stop add theirs. The crawl record (``crawl_runs.complete`` and
``crawl_runs.incomplete.<cat_id>``) is made of these and nothing else, so the exit status, the
final line and the report all say the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: More results in one price or cell than any split reaches.
UNREACHABLE: Final = "unreachable"
#: Paging stopped because pages brought (almost) nothing new while the API said there was more.
STALE_STOPPED: Final = "stale_stopped"
#: Pages the transport gave up on after its retries.
PAGES_GIVEN_UP: Final = "pages_given_up"
#: The crawl stopped before its end: the budget, the API's 439, Ctrl-C.
STOPPED: Final = "stopped"
REASONS: Final = (UNREACHABLE, STALE_STOPPED, PAGES_GIVEN_UP, STOPPED)


@dataclass(frozen=True, slots=True)
class Loss:
    """Part of ``cat_id`` the crawl did not read, and why.

    ``query`` is the key of the query behind it; ``unreached`` is at least this many results
    left unread, or None when nothing says how many.
    """

    cat_id: int
    reason: str
    query: str
    unreached: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")
