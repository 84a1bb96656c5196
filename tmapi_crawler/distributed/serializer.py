"""``SCHEDULER_SERIALIZER`` for scrapy-redis: requests as JSON data, never pickles.

scrapy-redis pickles requests by default, so anyone who can write to the Redis server can run
code in every worker. ``Request.to_dict()`` holds only data — strings, numbers, lists, dicts and
bytes (body, header names and values) — and that is all this module accepts. Bytes and dicts
whose keys are not plain strings are tagged, so they come back exactly as they were.
"""

from __future__ import annotations

import base64
import json
from typing import Any

_BYTES = "$bytes"
_PAIRS = "$pairs"


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {_PAIRS: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot queue a {type(value).__name__} in a request: only data may be queued")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if _BYTES in obj:
            return base64.b64decode(obj[_BYTES], validate=True)
        if _PAIRS in obj:
            return {_hashable(k): v for k, v in obj[_PAIRS]}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(_encode(obj), ensure_ascii=False, separators=(",", ":"))


def loads(data: str | bytes) -> dict[str, Any]:
    obj = json.loads(data, object_hook=_decode)
    if not isinstance(obj, dict):
        raise TypeError("a queued request must be a JSON object")
    return obj
