"""Every setting of the project, checked like an argument before anything starts.

A bad value (``-s TMAPI_CONCURRENCY=0``, ``MONGO_BATCH_SIZE=abc`` in the environment) must end
a command with one line naming the setting and what it accepts, exit status 2 and nothing
sent, not with a traceback from deep inside the crawl. A name under the project's prefixes
that nothing reads (``-s TMAPI_MAX_REQUEST=10``, one letter short) is refused the same way:
ignored, it would let the crawl pay without the budget the user meant to set.
:data:`SETTINGS` is the registry:
adding a setting is one line, its name and what it accepts; ``tests/test_validation.py`` fails
when a ``TMAPI_*``, ``MONGO_*`` or ``REDIS_*`` setting of ``settings.py`` or a profile is
missing from it or from ``docs/reference/settings.md``. Defaults stay in ``settings.py``: a
setting that is not set at all (a profile's setting in another profile) is not checked.
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from pymongo.errors import InvalidURI
from pymongo.uri_parser import parse_uri
from scrapy.settings import SETTINGS_PRIORITIES, default_settings
from scrapy.utils.misc import load_object

from tmapi_crawler.deprecations import current_path

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Prefixes of the settings this project owns: unknown names under them are typos.
PREFIXES: Final = ("TMAPI_", "MONGO_", "REDIS_")


class SettingError(ValueError):
    """A setting the project refuses; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What a setting accepts: ``accepts`` says it in words, ``valid`` decides."""

    accepts: str
    valid: Callable[[Any], bool]


# What settings accept. Command-line and environment values arrive as strings.


def _int_value(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def _float_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def integer(minimum: int, maximum: int | None = None) -> Rule:
    accepts = (f"a whole number from {minimum} to {maximum}" if maximum is not None
               else f"a whole number of at least {minimum}")

    def valid(value: Any) -> bool:
        number = _int_value(value)
        return number is not None and number >= minimum and (maximum is None or number <= maximum)

    return Rule(accepts, valid)


def number(minimum: float, *, above: bool = False, unit: str = "") -> Rule:
    """A finite number at least ``minimum`` (``above``: greater than it)."""
    bound = f"greater than {minimum:g}" if above else f"at least {minimum:g}"
    accepts = f"a number {bound}" + (f" ({unit})" if unit else "")

    def valid(value: Any) -> bool:
        got = _float_value(value)
        return got is not None and (got > minimum if above else got >= minimum)

    return Rule(accepts, valid)


def seconds(*, zero: bool = False) -> Rule:
    return number(0, above=not zero, unit="seconds")


BOOLEAN: Final = Rule(
    "true or false (also True, False, 1, 0)",
    lambda value: value in (True, False, 0, 1) or str(value).strip() in (
        "true", "false", "True", "False", "1", "0"),
)


def choice(*values: str) -> Rule:
    return Rule(f"one of {', '.join(values)}", lambda value: value in values)


def text(*, empty: bool = True, pattern: str | None = None, accepts: str = "") -> Rule:
    def valid(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if not value:
            return empty
        return pattern is None or re.fullmatch(pattern, value) is not None

    return Rule(accepts or ("text" if empty else "non-empty text"), valid)


def path(*, empty: bool = False) -> Rule:
    return text(empty=empty, pattern=r"[^\x00]+",
                accepts="a file path" + (" or nothing" if empty else ""))


def http_url() -> Rule:
    def valid(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError:
            return False
        return (parts.scheme in ("http", "https") and bool(parts.hostname)
                and not parts.query and not parts.fragment)

    return Rule("an http:// or https:// URL with a host, without query or fragment", valid)


def mongo_uri() -> Rule:
    """Empty (the embedded MongoDB) or a URI pymongo accepts; an SRV record is only checked
    for its form here, as resolving it would already be a network call."""

    def valid(value: Any) -> bool:
        if value == "":
            return True
        if not isinstance(value, str):
            return False
        if value.startswith("mongodb+srv://"):
            return bool(urlsplit(value).hostname)
        try:
            parse_uri(value)
        except (InvalidURI, ValueError):
            return False
        return True

    return Rule("a mongodb:// or mongodb+srv:// URI, or nothing for the embedded MongoDB", valid)


def redis_url() -> Rule:
    def valid(value: Any) -> bool:
        if value == "":
            return True
        if not isinstance(value, str) or urlsplit(value).scheme not in (
                "redis", "rediss", "unix"):
            return False
        import redis  # noqa: PLC0415 - a local crawl's start-up never needs redis-py (B12)

        try:
            redis.ConnectionPool.from_url(value)
        except ValueError:
            return False
        return True

    return Rule("a redis://, rediss:// or unix:// URL, or nothing for the embedded Redis", valid)


def object_path() -> Rule:
    def valid(value: Any) -> bool:
        if not isinstance(value, str):
            return callable(value)
        try:
            load_object(current_path(value))
        except (ImportError, NameError, ValueError, AttributeError):
            return False
        return True

    return Rule("the import path of a class, e.g. package.module.Class", valid)


#: MongoDB's limits on database names.
MONGO_DATABASE_NAME: Final = text(empty=False, pattern=r'[^/\\. "$*<>:|?\x00]{1,63}',
                                  accepts='a database name: 1-63 characters, none of /\\. "$*<>:|?')
#: Redis key prefixes are joined with ":"; spaces and braces would only cause trouble.
REDIS_PREFIX: Final = text(empty=False, pattern=r"[A-Za-z0-9_.-]+",
                           accepts="letters, digits, '_', '.' or '-'")

#: The registry: every setting of the project, and what it accepts.
SETTINGS: Final[dict[str, Rule]] = {
    # The API.
    "TMAPI_TOKEN": text(),
    "TMAPI_BASE_URL": http_url(),
    "TMAPI_CONCURRENCY": integer(1),
    "TMAPI_LIMITER": object_path(),
    "TMAPI_THROTTLE_RECOVERY": integer(1),
    "TMAPI_RETRY_TIMES": integer(0),
    "TMAPI_RETRY_BASE_DELAY": seconds(zero=True),
    "TMAPI_RETRY_MAX_DELAY": seconds(zero=True),
    "TMAPI_RESULT_CAP": integer(0),
    "TMAPI_MAX_REQUESTS": integer(0),
    "TMAPI_BUDGET": object_path(),
    # What to fetch next.
    "TMAPI_QUERY_WINDOW": integer(0),
    "TMAPI_FRONTIER_STATE": object_path(),
    # Feed exports.
    "TMAPI_FEED_RECORDS": choice("products", "sightings"),
    # Storage.
    "MONGO_URI": mongo_uri(),
    "MONGO_DATABASE": MONGO_DATABASE_NAME,
    "MONGO_EMBEDDED_DIR": path(),
    "MONGO_SPILL_DIR": path(),
    "MONGO_BATCH_SIZE": integer(1),
    "MONGO_FLUSH_INTERVAL": seconds(),
    "MONGO_RETRY_TIMEOUT": seconds(zero=True),
    "STATS_FILE": path(empty=True),
    "TMAPI_RUN_FINISHER": object_path(),
    # Stopping.
    "TMAPI_FORCED_STOP_TIMEOUT": seconds(zero=True),
    # Progress.
    "TMAPI_PROGRESS_INTERVAL": seconds(zero=True),
    "TMAPI_PROGRESS_BAR": BOOLEAN,
    # Alerts.
    "TMAPI_ALERTS_FILE": path(empty=True),
    "TMAPI_ALERTS_TIMEOUT": seconds(),
    # Distributed crawling.
    "TMAPI_DISTRIBUTED": BOOLEAN,
    "TMAPI_PROFILE": choice("", "local", "distributed", "production"),
    "REDIS_URL": redis_url(),
    "REDIS_EMBEDDED_DIR": path(),
    "TMAPI_REDIS_PREFIX": REDIS_PREFIX,
    "TMAPI_HEARTBEAT_INTERVAL": seconds(),
    "TMAPI_HEARTBEAT_TTL": seconds(),
    "TMAPI_LEASE_SECONDS": seconds(),
    "TMAPI_QUEUE_POLL_INTERVAL": seconds(),
    "TMAPI_LIMITER_POLL_INTERVAL": seconds(),
    "TMAPI_MAX_DELIVERIES": integer(1),
    "TMAPI_QUEUE_PREFETCH": integer(1),
    "MAX_IDLE_TIME_BEFORE_CLOSE": integer(0),
}


@dataclass(frozen=True, slots=True)
class Relation:
    """A rule between two settings, checked once each is valid on its own."""

    smaller: str
    larger: str
    strict: bool
    why: str


RELATIONS: Final = (
    Relation("TMAPI_RETRY_BASE_DELAY", "TMAPI_RETRY_MAX_DELAY", strict=False,
             why="the backoff starts at the base delay and is capped at the maximum"),
    Relation("TMAPI_HEARTBEAT_INTERVAL", "TMAPI_HEARTBEAT_TTL", strict=True,
             why="or live workers would be taken for dead"),
)


def _source(settings: BaseSettings, name: str) -> str:
    """Where a value came from, so the user knows what to fix."""
    if settings.getpriority(name) == SETTINGS_PRIORITIES["cmdline"]:
        return " (given with -s)"
    return ""


def check_settings(settings: BaseSettings) -> None:
    """Raise :class:`SettingError` for the first registered setting whose value is refused."""
    for name, rule in SETTINGS.items():
        value = settings.get(name)
        if value is None:
            continue
        if not rule.valid(value):
            raise SettingError(f"{name}={value!r}{_source(settings, name)}: expected "
                               f"{rule.accepts}")
    for relation in RELATIONS:
        low, high = settings.get(relation.smaller), settings.get(relation.larger)
        if low is None or high is None:
            continue
        low, high = float(low), float(high)
        if high < low or (relation.strict and high == low):
            word = "greater than" if relation.strict else "at least"
            raise SettingError(f"{relation.larger}={high:g} must be {word} "
                               f"{relation.smaller}={low:g}: {relation.why}")


@functools.cache
def library_settings() -> frozenset[str]:
    """Names under the prefixes that Scrapy or scrapy-redis read (``REDIS_HOST``, ``REDIS_PARAMS``,
    ``REDIS_START_URLS_KEY``, ...), taken from the installed packages rather than a copied list:
    scrapy-redis's defaults, and every ``REDIS_*`` string its modules look up. redis-py itself
    reads no settings."""
    import scrapy_redis  # noqa: PLC0415 - only for a setting under its prefixes (B12)
    from scrapy_redis import defaults as scrapy_redis_defaults  # noqa: PLC0415

    names = {name for name in dir(default_settings) if name.startswith(PREFIXES)}
    names.update(name for name in dir(scrapy_redis_defaults) if name.startswith(PREFIXES))
    for module in Path(scrapy_redis.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"REDIS_[A-Z0-9_]+", node.value)):
                names.add(node.value)
    return frozenset(names)


def _unknown(name: str) -> bool:
    return (name.startswith(PREFIXES) and name not in SETTINGS
            and name not in library_settings())


def _likeliest(name: str) -> str | None:
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return close[0] if close else None


def unknown_settings(settings: BaseSettings) -> Iterator[tuple[str, str | None]]:
    """Names under the project's prefixes that nothing reads, with the likeliest meant one."""
    for name in sorted(settings.attributes):
        if _unknown(name):
            yield name, _likeliest(name)


def check_names(settings: BaseSettings) -> None:
    """Raise :class:`SettingError` for the first setting name that nothing reads: from ``-s``,
    a profile or the settings module alike, as a typo would otherwise be silently ignored."""
    for name, suggestion in unknown_settings(settings):
        hint = (f"did you mean {suggestion}?" if suggestion
                else "tmapi-crawler, Scrapy and scrapy-redis have no such setting")
        raise SettingError(f"unknown setting {name}{_source(settings, name)}: {hint}")


def unknown_environment(environ: Mapping[str, str]) -> Iterator[tuple[str, str | None]]:
    """``TMAPI_*`` environment variables that name no setting, with the likeliest meant one.

    Only warned about: the environment is shared with other programs, and settings.py reads
    the few variables it takes by name."""
    for name in sorted(environ):
        if name.startswith("TMAPI_") and name not in SETTINGS:
            yield name, _likeliest(name)
