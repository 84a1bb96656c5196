"""What to crawl: spider arguments and plan files turned into validated queries.

Everything a user asks for is checked here, before the crawl opens, because every request
costs money: a typo must end the run with one clear line, not after the first paid call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import yaml

from tmapi_crawler import api


class PlanError(ValueError):
    """An argument or plan entry the crawler refuses; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Query:
    """One API query without its page: a category with one value of every setting."""

    cat_id: int
    language: str = api.DEFAULT_LANGUAGE
    sort: str = api.DEFAULT_SORT
    page_size: int = api.DEFAULT_PAGE_SIZE
    price_start: str | None = None
    price_end: str | None = None
    new_arrival: bool | None = None
    support_dropshipping: bool | None = None
    free_shipping: bool | None = None
    is_super_factory: bool | None = None

    def filters(self) -> dict[str, str | bool]:
        """The filters that are set, as the items' query context records them."""
        names = (*api.PRICE_FILTERS, *api.FLAG_FILTERS)
        return {n: v for n in names if (v := getattr(self, n)) is not None}

    def params(self, page: int) -> list[tuple[str, str]]:
        """Query-string parameters for one page, token excluded, in a fixed order."""
        values = self._values() | {"page": page}
        out = []
        for name in api.PARAMETER_ORDER:
            value = values[name]
            if value is None:
                continue
            out.append((name, api.format_bool(value) if isinstance(value, bool) else str(value)))
        return out

    def key(self) -> str:
        """A readable, stable name for logs and stats."""
        return "&".join(f"{k}={v}" for k, v in self.params(0) if k != "page")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self._values().items() if v is not None}

    def _values(self) -> dict[str, Any]:
        """The fields, all scalars: ``dataclasses.asdict`` deep-copies them, at 10 times the
        cost (it showed in profiles: the frontier names a query on every step)."""
        return {name: getattr(self, name) for name in _QUERY_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Query:
        return cls(**data)


_QUERY_FIELDS: Final = tuple(f.name for f in fields(Query))


@dataclass(frozen=True, slots=True)
class Plan:
    queries: tuple[Query, ...]
    max_pages: int | None = None


#: Arguments that take a comma list and fan out into one query per combination.
LIST_ARGUMENTS = ("cat_id", "language", "sort", *api.PRICE_FILTERS, *api.FLAG_FILTERS)
#: Arguments that take one value.
SCALAR_ARGUMENTS = ("page_size", "max_pages")
ARGUMENTS = (*LIST_ARGUMENTS, *SCALAR_ARGUMENTS, "plan")


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise PlanError(f"{name}: {value!r} is not a positive integer")
    return number


def _cat_id(value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise PlanError(
            f"cat_id: {value!r} is not an integer category id "
            "(expected e.g. cat_id=1031922 or cat_id=1031922,1031923)"
        )
    return int(text)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in allowed:
        raise PlanError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return text


def _price(name: str, value: Any) -> str:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        number = Decimal("NaN")
    if isinstance(value, bool) or not number.is_finite() or number < 0:
        raise PlanError(f"{name}: {value!r} is not a non-negative number")
    if number != number.quantize(api.PRICE_STEP):
        raise PlanError(f"{name}: {value!r} has more than two decimals: prices are whole fen "
                        "(e.g. 9.99)")
    return format(number.normalize(), "f")


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise PlanError(f"{name}: {value!r} is not a boolean (expected true or false)")
    return text == "true"


def _parse(name: str, value: Any) -> Any:
    if name == "cat_id":
        return _cat_id(value)
    if name == "language":
        return _choice(name, value, api.LANGUAGES)
    if name == "sort":
        return _choice(name, value, api.SORTS)
    if name in api.PRICE_FILTERS:
        return _price(name, value)
    if name in api.FLAG_FILTERS:
        return _flag(name, value)
    return _positive_int(name, value)


def _values(name: str, raw: Any) -> list[Any]:
    """Split a comma list (CLI) or take a list (plan file), parse and de-duplicate it."""
    if isinstance(raw, list | tuple):
        parts = list(raw)
    elif isinstance(raw, str):
        parts = [p for p in raw.split(",") if p.strip()]
    else:
        parts = [raw]
    if not parts:
        raise PlanError(f"{name}: no value given")
    return list(dict.fromkeys(_parse(name, p) for p in parts))


def _queries(spec: Mapping[str, Any]) -> list[Query]:
    """Fan one entry out into every combination of its listed values."""
    unknown = sorted(set(spec) - set(LIST_ARGUMENTS) - {"page_size"})
    if unknown:
        raise PlanError(f"{unknown[0]}: unknown argument (allowed: {', '.join(ARGUMENTS)})")
    if "cat_id" not in spec:
        raise PlanError("cat_id: missing (give one or more category ids, e.g. cat_id=1031922)")
    names = [n for n in LIST_ARGUMENTS if n in spec]
    choices = [_values(n, spec[n]) for n in names]
    page_size = _positive_int("page_size", spec.get("page_size", api.DEFAULT_PAGE_SIZE))
    queries = []
    for combo in itertools.product(*choices):
        values = dict(zip(names, combo, strict=True))
        start, end = values.get("price_start"), values.get("price_end")
        if start is not None and end is not None and Decimal(start) > Decimal(end):
            raise PlanError(f"price_start: {start} is greater than price_end {end}")
        queries.append(Query(page_size=page_size, **values))
    return queries


def _syntax_error(path: str, exc: Exception) -> PlanError:
    """A parser's complaint as one line, with the line and column it points at."""
    if isinstance(exc, json.JSONDecodeError):
        return PlanError(f"plan: {path!r} line {exc.lineno}, column {exc.colno}: not valid JSON: "
                         f"{exc.msg}")
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return PlanError(f"plan: {path!r}{where}: not valid YAML: {problem}")


def _entry_lines(text: str) -> list[int]:
    """The line each entry of ``queries`` starts on, for error messages (JSON is YAML too)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "queries" and isinstance(value, yaml.SequenceNode):
            return [entry.start_mark.line + 1 for entry in value.value]
    return []


def _read_plan_file(path: str) -> tuple[dict[str, Any], list[int]]:
    """The plan file's document, and the line of each of its entries."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"plan: cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan: {path!r} is not UTF-8 text: {exc.reason}") from None
    try:
        doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise _syntax_error(path, exc) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("queries"), list):
        raise PlanError(f"plan: {path!r} must be a mapping with a 'queries' list")
    unknown = sorted(set(doc) - {"defaults", "queries", "max_pages"})
    if unknown:
        raise PlanError(f"plan: {path!r}: unknown key {unknown[0]!r} (allowed: defaults, "
                        "queries, max_pages)")
    return doc, _entry_lines(text)


def plan_from_arguments(arguments: Mapping[str, Any]) -> Plan:
    """Validate spider arguments (``-a name=value``) and build the crawl plan.

    With ``plan=FILE``, the other arguments act as defaults for every entry of the file that
    does not set them itself. ``cat_id`` is refused next to ``plan``: every entry names its
    own categories, so a category given on the command line would be silently ignored.
    """
    args = {k: v for k, v in arguments.items() if k in ARGUMENTS}
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise PlanError(f"{unknown[0]}: unknown argument (allowed: {', '.join(ARGUMENTS)})")
    max_pages = args.pop("max_pages", None)
    plan_path = args.pop("plan", None)
    entries: list[tuple[str, Mapping[str, Any]]] = [("", args)]
    if plan_path is not None:
        if "cat_id" in args:
            raise PlanError("cat_id: not allowed next to plan: the plan's entries name their "
                            "categories (put cat_id in the plan file)")
        doc, lines = _read_plan_file(str(plan_path))
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise PlanError(f"plan: {plan_path!r}: defaults must be a mapping")
        defaults = {**defaults, **args}
        max_pages = max_pages if max_pages is not None else doc.get("max_pages")
        entries = []
        for index, entry in enumerate(doc["queries"]):
            line = f" (line {lines[index]})" if index < len(lines) else ""
            where = f"plan: queries[{index}]{line}"
            if not isinstance(entry, dict):
                raise PlanError(f"{where} must be a mapping")
            entries.append((f"{where}: ", {**defaults, **entry}))
    queries: list[Query] = []
    for where, spec in entries:
        try:
            queries.extend(_queries(spec))
        except PlanError as exc:
            raise PlanError(f"{where}{exc}") from None
    limit = None if max_pages is None else _positive_int("max_pages", max_pages)
    return Plan(queries=tuple(dict.fromkeys(queries)), max_pages=limit)

