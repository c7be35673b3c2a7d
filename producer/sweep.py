"""Sweeps: one row (or a whole file, from the command line) expanded into many items.

A row may carry

    "sweep": {"scale": [0.3, 0.5, 0.7], "prompt": ["a", "b"]}   cartesian product (6 items)
    "zip":   {"prompt": ["a", "b"], "seed": [1, 2]}             paired lists (2 items)
    "repeat": 3                                                 each combination 3 times

(in CSV, `sweep` and `zip` cells hold the same JSON objects). `--sweep field=v1,v2` and
`--repeat N` do the same for every row of a submission. Repeats get distinct seeds where the
model has one: the row's seed + k, or a seed derived from the row when none is given, so a
resubmitted file resolves to the same inputs (and the same item ids) every time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import product
from typing import Any

from rcbatch.errors import InputError, Problem
from rcbatch.producer.reader import Row
from rcbatch.runcomfy import catalogue

SWEEP_FIELDS = ("sweep", "zip", "repeat")
MAX_EXPANSION = 10_000
MAX_REPEAT = 1_000


def parse_cli_sweep(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """`--sweep field=v1,v2` options as {field: [values]}; values are JSON when they parse."""
    axes: dict[str, list[Any]] = {}
    for pair in pairs:
        name, sep, values = pair.partition("=")
        if not sep or not name.strip() or not values:
            raise InputError(f"--sweep {pair!r}: expected FIELD=VALUE1,VALUE2,...")
        axes[name.strip()] = [_value(v) for v in values.split(",")]
    return axes


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def expand_rows(rows: Iterable[Row], *, cli_sweep: Mapping[str, list[Any]] | None = None,
                repeat: int | None = None) -> tuple[list[Row], list[Problem]]:
    """Every row with its sweep expanded; rows whose sweep is malformed become problems."""
    out: list[Row] = []
    problems: list[Problem] = []
    for row in rows:
        try:
            out.extend(expand_row(row, cli_sweep or {}, repeat))
        except _SweepError as exc:
            problems.append(Problem(row.file, row.line, exc.field, exc.message))
    return out, problems


class _SweepError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def expand_row(row: Row, cli_sweep: Mapping[str, list[Any]], cli_repeat: int | None) -> list[Row]:
    """The rows one row stands for (itself alone when it has no sweep)."""
    data = dict(row.data)
    sweep = {**cli_sweep, **_axes(data.pop("sweep", None), "sweep")}
    zipped = _axes(data.pop("zip", None), "zip")
    repeat = _repeat(data.pop("repeat", None), cli_repeat)
    if not sweep and not zipped and repeat == 1:
        return [replace(row, data=data)] if data != row.data else [row]
    combos = _combinations(sweep, zipped)
    if len(combos) * repeat > MAX_EXPANSION:
        raise _SweepError("sweep", f"expands to {len(combos) * repeat} items; the limit per "
                          f"row is {MAX_EXPANSION}")
    return [_expanded(row, data, axes, k, repeat)
            for axes in combos for k in range(repeat)]


def _axes(value: Any, name: str) -> dict[str, list[Any]]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _SweepError(name, "must be a JSON object of field: [values]") from None
    if not isinstance(value, dict) or not value:
        raise _SweepError(name, "must be a non-empty object of field: [values]")
    for field, values in value.items():
        if field in catalogue.RESERVED_FIELDS or field in SWEEP_FIELDS:
            raise _SweepError(f"{name}.{field}", "cannot be swept")
        if not isinstance(values, list) or not values:
            raise _SweepError(f"{name}.{field}", "must be a non-empty list of values")
    return dict(value)


def _repeat(value: Any, cli_repeat: int | None) -> int:
    if value is None or value == "":
        return cli_repeat or 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEAT:
        raise _SweepError("repeat", f"must be a whole number from 1 to {MAX_REPEAT}")
    return value


def _combinations(sweep: Mapping[str, list[Any]],
                  zipped: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise _SweepError("zip", f"lists must have the same length (got {sorted(lengths)})")
    overlap = set(sweep) & set(zipped)
    if overlap:
        raise _SweepError("zip", f"{sorted(overlap)[0]} is both swept and zipped")
    pairs = ([dict(zip(zipped, values, strict=True)) for values in zip(*zipped.values(),
                                                                       strict=True)]
             if zipped else [{}])
    crossed = [dict(zip(sweep, values, strict=True)) for values in product(*sweep.values())]
    return [{**c, **p} for c in crossed for p in pairs]


def _expanded(row: Row, data: dict[str, Any], axes: dict[str, Any], k: int,
              repeat: int) -> Row:
    body = {**data, **axes}
    if repeat > 1:
        _seed(body, k)
    meta = {"axes": axes, "repeat": k} if repeat > 1 else {"axes": axes}
    return replace(row, data=body, sweep=meta)


def _seed(body: dict[str, Any], k: int) -> None:
    """Distinct seeds per repeat where the model has a seed."""
    spec = catalogue.MODELS.get(str(body.get("model")))
    if spec is None or not spec.has_seed:
        return
    given = body.get("seed")
    if isinstance(given, int) and not isinstance(given, bool) and given >= 0:
        body["seed"] = given + k
        return
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(f"{canonical}\n{k}".encode()).digest()
    body["seed"] = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def sweep_suffix(meta: Mapping[str, Any]) -> str:
    """A short, stable suffix naming one expansion (for rows that give their own id)."""
    canonical = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]
