"""Parsing JSON text strictly: non-finite numbers marked, duplicate keys recorded."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


class NonFinite:
    """Stands in for NaN, Infinity or an overflowing number while a line is parsed."""

    def __init__(self, text: str) -> None:
        self.text = text


def walk(value: Any) -> Iterator[Any]:
    """Every value nested in `value` (and the keys of objects), without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def has_surrogate(value: Any) -> bool:
    """True when some string in `value` holds a lone surrogate (it could not be sent)."""
    return any(isinstance(v, str) and _SURROGATE.search(v) for v in walk(value))


def has_non_finite(value: Any) -> bool:
    """True when `value` holds NaN, Infinity or a number too large for a float."""
    return any(isinstance(v, NonFinite) for v in walk(value))


def json_loads(text: str, duplicates: list[str] | None = None) -> Any:
    """`json.loads` that marks non-finite numbers and records duplicate keys."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj and duplicates is not None:
                duplicates.append(key)
            # Interned: 100,000 rows share one copy of each field name, not 100,000.
            obj[sys.intern(key)] = value
        return obj

    def number(token: str) -> float | NonFinite:
        value = float(token)
        return value if math.isfinite(value) else NonFinite(token)

    return json.loads(text, object_pairs_hook=pairs, parse_constant=NonFinite,
                      parse_float=number)


def json_error(exc: Exception) -> str:
    """A one-line description of why a JSON text did not parse."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(":")[0]
