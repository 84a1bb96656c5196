"""The alerts file (``TMAPI_ALERTS_FILE``): where to send, and which changes are worth it.

Read once, checked whole before anything starts: a mistake ends the command with one line
naming the file's line (exit 2, nothing sent to the API), rather than a crawl that pays for its
pages and then cannot tell anyone. Notification URLs carry secrets (bot tokens, webhook keys):
nothing here ever prints one — a URL is named by its service (its scheme) only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

#: Rule kinds, and the parameters each one takes (beyond the ``cat_id``/``item_id`` filters).
KINDS: Final = {
    "price_drop": ("min_pct",),
    "price_rise": ("min_pct",),
    "below": ("price",),
    "new": (),
    "vanished": (),
    "incomplete": (),
}
FILTERS: Final = ("cat_id", "item_id")


class RulesError(ValueError):
    """The alerts file is refused; the message is one line, naming the file and line."""


def service_of(url: str) -> str:
    """What a notification URL may be called in logs and records: its scheme, no secret."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and scheme.isalnum() else "unknown"


def destination_key(url: str) -> str:
    """A stable, one-way name of a notification URL, for ``alerts_sent`` keys."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    min_pct: float | None = None
    price: float | None = None
    cat_id: frozenset[int] = frozenset()
    item_id: frozenset[int] = frozenset()
    #: Where it was written, for messages: ``alerts.yaml:7``.
    line: int = 0

    @property
    def key(self) -> str:
        """Stable over edits that do not change the rule: ``alerts_sent`` keys use it."""
        spelled = json.dumps({"kind": self.kind, "min_pct": self.min_pct, "price": self.price,
                              "cat_id": sorted(self.cat_id), "item_id": sorted(self.item_id)},
                             sort_keys=True)
        return f"{self.kind}-{hashlib.sha256(spelled.encode()).hexdigest()[:10]}"

    def describe(self) -> str:
        """The rule in words, as a message's title says it."""
        if self.kind in ("price_drop", "price_rise"):
            verb = "dropped" if self.kind == "price_drop" else "rose"
            words = f"price {verb} by {self.min_pct or 0:g}% or more"
        elif self.kind == "below":
            words = f"price at or below {self.price or 0:g}"
        else:
            words = {"new": "new products", "vanished": "products gone from a category",
                     "incomplete": "crawl incomplete"}[self.kind]
        if self.cat_id:
            words += f" (categories {', '.join(map(str, sorted(self.cat_id)))})"
        if self.item_id:
            words += f" ({len(self.item_id)} watched products)"
        return words

    def watches(self, item_id: int, categories: Any) -> bool:
        """Whether a product falls under the rule's ``item_id``/``cat_id`` filters."""
        if self.item_id and item_id not in self.item_id:
            return False
        return not self.cat_id or bool(self.cat_id & set(categories or ()))


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    notify: tuple[str, ...]
    rules: tuple[Rule, ...] = field(default_factory=tuple)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _ids(value: Any, where: str, name: str) -> frozenset[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                             for v in values):
        raise RulesError(f"{where}: {name} must be a positive whole number or a list of them")
    return frozenset(values)


def _rule(node: yaml.Node, value: Any, name: str) -> Rule:
    line = node.start_mark.line + 1
    where = f"{name}:{line}"
    if not isinstance(value, dict):
        raise RulesError(f"{where}: a rule is a mapping such as {{kind: price_drop, min_pct: 10}}")
    kind = value.get("kind")
    if kind not in KINDS:
        raise RulesError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    # A crawl's completeness is told per category, not per product.
    allowed = {"kind", *KINDS[kind], *(("cat_id",) if kind == "incomplete" else FILTERS)}
    if unknown := sorted(set(value) - allowed, key=str):
        raise RulesError(f"{where}: {kind} takes {', '.join(sorted(allowed - {'kind'}))}; "
                         f"not {unknown[0]!r}")
    params: dict[str, Any] = {}
    for param in KINDS[kind]:
        got = _number(value.get(param))
        if got is None or got < 0 or (param == "min_pct" and got >= 100 and kind == "price_drop"):
            bound = "from 0 to under 100" if kind == "price_drop" else "of at least 0"
            raise RulesError(f"{where}: {kind} needs {param}, a number {bound}")
        params[param] = got
    filters = {f: _ids(value[f], where, f) for f in FILTERS if f in value}
    return Rule(kind, line=line, **params, **filters)


def _check_url(url: Any, where: str) -> None:
    if not isinstance(url, str) or "://" not in url:
        raise RulesError(f"{where}: notify takes Apprise URLs such as json://host/path")
    from tmapi_crawler.alerts.deliver import apprise_module  # noqa: PLC0415 - Apprise: only here

    if apprise_module().Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise RulesError(f"{where}: Apprise does not accept this {service_of(url)}:// URL "
                         "(see its documentation for the service's form)")


def parse(text: str, name: str = "alerts file", *, check_urls: bool = True) -> AlertsConfig:
    """The file's content as rules; :class:`RulesError` for the first thing wrong in it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise RulesError(f"{name}{line}: {problem}") from None
    if not isinstance(data, dict) or root is None:
        raise RulesError(f"{name}:1: expected a mapping with notify: and rules:")
    nodes = {key.value: val for key, val in root.value if isinstance(key, yaml.ScalarNode)}
    if unknown := sorted(set(data) - {"notify", "rules"}, key=str):
        raise RulesError(f"{name}:1: unknown key {unknown[0]!r} (expected notify and rules)")
    notify = data.get("notify")
    line = nodes["notify"].start_mark.line + 1 if "notify" in nodes else 1
    if not isinstance(notify, list) or not notify:
        raise RulesError(f"{name}:{line}: notify must be a non-empty list of Apprise URLs")
    for position, url in enumerate(notify):
        node = nodes["notify"].value[position]
        where = f"{name}:{node.start_mark.line + 1}"
        if check_urls:
            _check_url(url, where)
        elif not isinstance(url, str):
            raise RulesError(f"{where}: notify takes Apprise URLs such as json://host/path")
    rules = data.get("rules")
    line = nodes["rules"].start_mark.line + 1 if "rules" in nodes else 1
    if not isinstance(rules, list) or not rules:
        raise RulesError(f"{name}:{line}: rules must be a non-empty list")
    parsed = tuple(_rule(node, value, name) for node, value in zip(
        nodes["rules"].value, rules, strict=True))
    seen: dict[str, int] = {}
    for rule in parsed:
        if rule.key in seen:
            raise RulesError(f"{name}:{rule.line}: the same rule as line {seen[rule.key]}")
        seen[rule.key] = rule.line
    return AlertsConfig(tuple(notify), parsed)


def load(path: str, *, check_urls: bool = True) -> AlertsConfig:
    """Read and check ``TMAPI_ALERTS_FILE``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse(text, path, check_urls=check_urls)
