"""Row validation against the model table: every problem of a row at once, never an exception.

Rows arrive already typed (CSV coercion is the producer's job), so a numeric string is not a
number here and `true` is not an integer. Limits written only in a description, and rules a
page contradicts, give warnings: the API's own answer decides those.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from rcbatch.runcomfy.catalogue.spec import (
    RESERVED_FIELDS,
    FieldSpec,
    Issue,
    ModelSpec,
    is_finite_number,
)
from rcbatch.runcomfy.catalogue.table import MODELS

#: the wire limit for integers (seeds included): the pages give no range, JSON ints beyond
#: signed 64-bit are not portable
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: fields that mean the same thing under another model's spelling
FIELD_SYNONYMS = (frozenset({"image_urls", "images"}), frozenset({"width×height", "resolution"}))

_KIND_NAMES = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "a boolean (true or false)", "array": "a list"}


def get_model(model_id: str) -> ModelSpec:
    """The catalogue entry for `model_id`; KeyError with the unknown-model message if none."""
    try:
        return MODELS[model_id]
    except (KeyError, TypeError):
        raise KeyError(unknown_model_issue(model_id).message) from None


def validate(model_id: str, row: Mapping[str, Any], *,
             allow_loopback_http: bool = True) -> list[Issue]:
    """Every problem of `row` as input to `model_id` (empty list: valid). Never raises.

    `allow_loopback_http` admits plain `http://` image URLs on 127.0.0.1/localhost/::1 (the
    local simulator); `https://` with a host is required otherwise. The keys `model` and `id`
    are rcbatch's own and are skipped.
    """
    spec = MODELS.get(model_id) if isinstance(model_id, str) else None
    if spec is None:
        return [unknown_model_issue(model_id)]
    return validate_spec(spec, row, allow_loopback_http=allow_loopback_http)


def validate_spec(spec: ModelSpec, row: Mapping[str, Any], *,
                  allow_loopback_http: bool = True) -> list[Issue]:
    """`validate` against a ModelSpec that need not be in MODELS (a model being added)."""
    if not isinstance(row, Mapping):
        return [Issue("row", f"a row must be an object of fields, got {describe(row)}")]
    issues: list[Issue] = []
    for key, value in row.items():
        name = key if isinstance(key, str) and key else repr(key)
        if name in RESERVED_FIELDS:
            continue
        field = spec.fields.get(name)
        if field is None:
            issues.append(unknown_field_issue(spec, name))
        else:
            issues.extend(check_value(field, value, allow_loopback_http=allow_loopback_http))
    issues.extend(Issue(name, "required field is missing")
                  for name in spec.required if name not in row)
    return issues


def check_value(field: FieldSpec, value: Any, *, allow_loopback_http: bool = True) -> list[Issue]:
    """The problems of one field's value (type first; nothing else is checked on a wrong type)."""
    wrong = type_problem(field, value)
    if wrong:
        return [Issue(field.name, wrong)]
    checker = _CHECKERS.get(field.kind)
    return checker(field, value, allow_loopback_http) if checker else []


def type_problem(field: FieldSpec, value: Any) -> str | None:
    """Why `value` is not of the field's JSON type, or None."""
    if _has_kind(field.kind, value):
        if isinstance(value, float) and not is_finite_number(value):
            return f"must be a finite number, got {describe(value)}"
        return None
    message = f"must be {_KIND_NAMES[field.kind]}, got {describe(value)}"
    if value is None and not field.required:
        message += f" (leave the field out to use the default {_show(field.default)})"
    return message


_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "array": (list, tuple)}


def _has_kind(kind: str, value: Any) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to the API
        return kind == "boolean"
    return kind != "boolean" and isinstance(value, _PY_TYPES[kind])


def _check_string(field: FieldSpec, value: str, _loopback: bool) -> list[Issue]:
    issues = []
    enum_problem = _enum_problem(field, value)
    if enum_problem:
        issues.append(Issue(field.name, enum_problem))
    if field.max_length is not None and len(value) > field.max_length:
        issues.append(Issue(field.name, f"must be at most {field.max_length} characters, "
                                        f"got {len(value)}"))
    if field.required and not value.strip():
        issues.append(Issue(field.name, "is empty", "warning"))
    issues.extend(Issue(field.name, _soft_message(limit.message, limit.rule, value), "warning")
                  for limit in field.soft_limits if not limit.check(value))
    return issues


def _soft_message(message: str, rule: str, value: str) -> str:
    found = f"got {len(value)} characters" if rule == "length<" else "no number found"
    return f"{message} ({found}; this limit is only in the model's description, the API decides)"


def _check_number(field: FieldSpec, value: float, _loopback: bool) -> list[Issue]:
    problems = [_enum_problem(field, value)]
    if field.minimum is not None and value < field.minimum:
        problems.append(f"must be at least {_show(field.minimum)}, got {_show(value)}")
    if field.maximum is not None and value > field.maximum:
        problems.append(f"must be at most {_show(field.maximum)}, got {_show(value)}")
    if field.kind == "integer" and not INT64_MIN <= value <= INT64_MAX:
        problems.append(f"must fit a signed 64-bit integer ({INT64_MIN}..{INT64_MAX}), "
                        f"got {_show(value)}")
    return [Issue(field.name, p) for p in problems if p]


def _check_array(field: FieldSpec, value: Sequence[Any], loopback: bool) -> list[Issue]:
    issues = []
    if field.min_items is not None and len(value) < field.min_items:
        issues.append(Issue(field.name, f"must have at least {_items(field.min_items)}, "
                                        f"got {len(value)}"))
    if field.max_items is not None and len(value) > field.max_items:
        issues.append(Issue(field.name, f"must have at most {_items(field.max_items)}, "
                                        f"got {len(value)}"))
    if field.item_format == "image_uri":
        for index, item in enumerate(value):
            problem = url_problem(item, allow_loopback_http=loopback)
            if problem:
                issues.append(Issue(f"{field.name}[{index}]", problem))
    return issues


_CHECKERS: dict[str, Callable[[FieldSpec, Any, bool], list[Issue]]] = {
    "string": _check_string, "integer": _check_number, "number": _check_number,
    "array": _check_array,
}


def url_problem(value: Any, *, allow_loopback_http: bool = True) -> str | None:
    """Why `value` is not an image URL the API can fetch, or None."""
    if not isinstance(value, str):
        return f"must be an image URL string, got {describe(value)}"
    if not value or any(ch.isspace() for ch in value):
        return f"must be a URL without spaces, got {_clip(value)!r}"
    try:
        parts = urlsplit(value)
        host, scheme = parts.hostname, parts.scheme.lower()
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        return f"is not a valid URL: {_clip(value)!r}"
    if scheme == "https" and host:
        return None
    if scheme == "http" and host in LOOPBACK_HOSTS and allow_loopback_http:
        return None
    return (f"must be an https:// URL with a host (plain http:// only on a loopback host, for "
            f"the local simulator), got {_clip(value)!r}")


def _enum_problem(field: FieldSpec, value: Any) -> str | None:
    if field.enum is None or value in field.enum:
        return None
    allowed = ", ".join(_show(v) for v in field.enum)
    message = f"must be one of {allowed}; got {_show(value)}"
    if isinstance(value, str):
        spelled = {_squash(v): v for v in field.enum if isinstance(v, str)}.get(_squash(value))
        if spelled is not None:
            message += f" (this model spells it {spelled!r})"
    return message


def _squash(text: str) -> str:
    """Spelling-insensitive form of a size value: no spaces, lower case, × read as x."""
    return re.sub(r"\s+", "", text).lower().replace("×", "x")


def unknown_field_issue(spec: ModelSpec, name: str) -> Issue:
    """An error for a field `spec` does not have, with a "did you mean" hint when one is close."""
    hint = _suggest_field(spec, name)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    return Issue(name, f"unknown field for {spec.model_id}{did_you_mean} "
                       f"(its fields: {', '.join(spec.fields)})")


def _suggest_field(spec: ModelSpec, name: str) -> str | None:
    for group in FIELD_SYNONYMS:
        if name in group:
            matches = sorted(group & set(spec.fields))
            if matches:
                return matches[0]
    squashed = {_field_key(f): f for f in spec.fields}
    close = difflib.get_close_matches(_field_key(name), list(squashed), n=1, cutoff=0.75)
    return squashed[close[0]] if close else None


def _field_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower().replace("×", "x").replace("*", "x"))


#: how a model the catalogue lacks gets in
ADD_HINT = ("to use another RunComfy model, save its API page (or its input schema) and run "
            "`rcbatch models add FILE`")


def unknown_model_issue(model_id: object) -> Issue:
    """An error on field `model`: the closest catalogued ids, every known id, how to add one."""
    close = MODELS.closest(model_id) if isinstance(model_id, str) and model_id else []
    quoted = [repr(m) for m in close]
    names = " or ".join(filter(None, (", ".join(quoted[:-1]), *quoted[-1:])))
    did_you_mean = f" (did you mean {names}?)" if close else ""
    return Issue("model", f"unknown model {_show(model_id)}{did_you_mean}; "
                          f"known models: {', '.join(MODELS)}; {ADD_HINT}")


def describe(value: Any) -> str:
    """A short human description of a JSON-ish value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"the string {_clip(value)!r}"
    if isinstance(value, int | float):
        return _show(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(_clip(value))
    try:
        return _clip(repr(value))
    except ValueError:  # an int past Python's 4300-digit str() limit
        return "a very large number"


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
