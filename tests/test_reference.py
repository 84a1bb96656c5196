"""The reference pages name what the code defines: a signal added, or a module moved, without
its row or its new path fails here."""

from __future__ import annotations

import importlib
import re

from tests.crawling import PROJECT_ROOT
from tmapi_crawler import signals
from tmapi_crawler.deprecations import MOVED

REFERENCE = PROJECT_ROOT / "docs" / "reference"
DOTTED = re.compile(r"`(tmapi_crawler(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def test_every_signal_has_one_row_in_signals_md() -> None:
    defined = {name for name, value in vars(signals).items()
               if not name.startswith("_") and type(value) is object}
    text = (REFERENCE / "signals.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE)
    assert len(defined) >= 14
    assert sorted(rows) == sorted(defined)  # one row each, none for a signal not defined


def resolves(path: str) -> bool:
    """The longest importable module of ``path``, then attributes for the rest."""
    parts = path.split(".")
    for length in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:length]))
        except ImportError:
            continue
        return all((found := getattr(found, name, None)) is not None
                   for name in parts[length:])
    return False


def test_every_dotted_path_in_the_readme_and_the_reference_resolves() -> None:
    pages = [PROJECT_ROOT / "README.md", *sorted(REFERENCE.glob("*.md"))]
    paths = {path for page in pages for path in DOTTED.findall(page.read_text())}
    assert len(paths) > 10
    assert not resolves("tmapi_crawler.storage.runs.new_crawl_id")  # moved to crawl
    assert sorted(path for path in paths - set(MOVED) if not resolves(path)) == []
