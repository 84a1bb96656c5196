"""The reference pages name what the code defines: a signal added, or a module moved, without
its row or its new path fails here."""

from __future__ import annotations

import re

from tests.crawling import PROJECT_ROOT
from tmapi_crawler import signals

REFERENCE = PROJECT_ROOT / "docs" / "reference"


def test_every_signal_has_one_row_in_signals_md() -> None:
    defined = {name for name, value in vars(signals).items()
               if not name.startswith("_") and type(value) is object}
    text = (REFERENCE / "signals.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE)
    assert len(defined) >= 14
    assert sorted(rows) == sorted(defined)  # one row each, none for a signal not defined
