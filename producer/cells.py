"""Turning CSV cells into the JSON values a model's fields take."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from rcbatch.producer.jsontext import has_non_finite, has_surrogate, json_error, json_loads

_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _to_integer(text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"expected an integer, got {text[:40]!r}")
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer, got one with too many digits") from None


def _to_number(text: str) -> int | float:
    if _INT_RE.fullmatch(text):
        return _to_integer(text)  # as JSON would read it, so CSV and JSONL ids agree
    value = float(text) if _NUM_RE.fullmatch(text) else None
    if value is None or not math.isfinite(value):
        raise ValueError(f"expected a number, got {text[:40]!r}")
    return value


def _to_boolean(text: str) -> bool:
    if text.lower() not in _BOOLS:
        raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {text[:40]!r}")
    return _BOOLS[text.lower()]


def _to_array(text: str) -> list[Any]:
    if not text.startswith("["):
        return [part.strip() for part in text.split("|") if part.strip()]
    try:
        value = json_loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"expected a JSON array or |-separated URLs; the JSON array is "
                         f"not valid: {json_error(exc)}") from None
    if not isinstance(value, list) or has_non_finite(value) or has_surrogate(value):
        raise ValueError("expected a JSON array (of finite numbers and text) or "
                         "|-separated URLs")
    return value


_COERCERS: dict[str, Callable[[str], Any]] = {
    "integer": _to_integer, "number": _to_number, "boolean": _to_boolean, "array": _to_array,
}


def coerce_cell(kind: str | None, cell: str) -> Any:
    """Convert one non-empty CSV cell to the JSON value a field of `kind` takes.

    Strings (and fields the model does not have) are kept exactly as written; a cell that
    does not fit raises ValueError whose message names the expected type.
    """
    convert = _COERCERS.get(kind or "string")
    return cell if convert is None else convert(cell.strip())
