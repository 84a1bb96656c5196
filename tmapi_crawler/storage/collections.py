"""The MongoDB collections the project keeps, one name each.

Every module that reads or writes one names it from here; what each holds, field by field, is
``docs/reference/collections.md``.
"""

from __future__ import annotations

from typing import Final

#: One document per product, ``_id`` = its ``item_id`` (``storage.store``).
PRODUCTS: Final = "products"
#: One document per crawl (``storage.runs``).
CRAWL_RUNS: Final = "crawl_runs"
#: Items that could not be stored as products.
REJECTED: Final = "rejected_items"
#: What changed between crawls, per product and crawl (``storage.history``).
HISTORY: Final = "history"
#: The resume ledger: a crawl's pages paid for and stored (``storage.ledger``).
LEDGER: Final = "crawl_pages"
#: The answer spool: answers paid for and not stored yet (``storage.spool``).
SPOOL: Final = "crawl_answers"
#: The changes an alert rule fired on, per destination (``alerts``).
ALERTS_SENT: Final = "alerts_sent"
