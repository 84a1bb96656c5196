"""Class paths users set that moved: the old path keeps working for a while, with a warning.

``TMAPI_LIMITER``, ``TMAPI_BUDGET`` and ``TMAPI_FRONTIER_STATE`` name a class by its dotted
path, in a user's settings module, profile or ``-s``. When a class moves, its old path goes in
:data:`MOVED` (old path -> new path); the settings' check (``validation``) and whoever builds the
class (:func:`load_class`) both read through it, so the old path loads the new class, and a
``ScrapyDeprecationWarning`` naming the new path is issued once per process. A path neither
importable nor in the table is still refused by the check (exit 2).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Final

from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.utils.misc import load_object

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Old dotted path -> where the class is now.
MOVED: Final[dict[str, str]] = {
    "tmapi_crawler.spend.budget.LocalBudget": "tmapi_crawler.transport.budget.LocalBudget",
}

#: Old paths already warned about: once per process is enough to be seen.
_warned: set[str] = set()


def current_path(path: str) -> str:
    """Where the class named ``path`` is now; a moved path draws the warning once."""
    new = MOVED.get(path)
    if new is None:
        return path
    if path not in _warned:
        _warned.add(path)
        warnings.warn(f"{path} has moved to {new}: set {new} instead (the old path will stop "
                      "working in a later release)", ScrapyDeprecationWarning, stacklevel=2)
    return new


def load_class(settings: BaseSettings, name: str) -> Any:
    """The class (or callable) setting ``name`` names, through :data:`MOVED`."""
    value = settings[name]
    return load_object(current_path(value) if isinstance(value, str) else value)
