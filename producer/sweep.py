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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product
from typing import Any

from rcbatch.errors import InputError, Problem
from rcbatch.producer.reader import ROW_FIELD, Row, one_line
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
        except SweepError as exc:
            problems.append(exc.problem(row))
    return out, problems


class SweepError(Exception):
    """A row's sweep, zip or repeat cannot be expanded: `field` and `message` say why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message

    def problem(self, row: Row) -> Problem:
        """This error as the problem of `row`."""
        return Problem(row.file, row.line, one_line(self.field), one_line(self.message))


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What one row expands to, worked out from the axis lengths before anything is built."""

    row: Row
    data: dict[str, Any]
    sweep: dict[str, list[Any]]
    zipped: dict[str, list[Any]]
    repeat: int

    @property
    def size(self) -> int:
        """How many rows the expansion gives: product of sweep lengths x zip length x repeat."""
        size = self.repeat * (len(next(iter(self.zipped.values()))) if self.zipped else 1)
        for values in self.sweep.values():
            size *= len(values)
        return size

    @property
    def field(self) -> str:
        """The field a problem about the size of this expansion names."""
        return "sweep" if self.sweep else "zip" if self.zipped else \
            "repeat" if self.repeat > 1 else ROW_FIELD

    def rows(self) -> Iterator[Row]:
        """The expanded rows, one at a time (the row itself when nothing is swept)."""
        if not self.sweep and not self.zipped and self.repeat == 1:
            yield replace(self.row, data=self.data) if self.data != self.row.data else self.row
            return
        for axes in _combinations(self.sweep, self.zipped):
            for k in range(self.repeat):
                yield _expanded(self.row, self.data, axes, k, self.repeat)


def plan_row(row: Row, cli_sweep: Mapping[str, list[Any]] | None = None,
             cli_repeat: int | None = None) -> SweepPlan:
    """Check one row's sweep, zip and repeat and size its expansion; builds nothing.

    Raises `SweepError` when they are malformed or the row would pass `MAX_EXPANSION`.
    """
    data = dict(row.data)
    sweep = {**(cli_sweep or {}), **_axes(data.pop("sweep", None), "sweep")}
    zipped = _axes(data.pop("zip", None), "zip")
    repeat = _repeat(data.pop("repeat", None), cli_repeat)
    _check_zip(sweep, zipped)
    plan = SweepPlan(row, data, sweep, zipped, repeat)
    if plan.size > MAX_EXPANSION:
        raise SweepError(plan.field, f"expands to {plan.size} items; the limit per row is "
                         f"{MAX_EXPANSION}")
    return plan


def expand_row(row: Row, cli_sweep: Mapping[str, list[Any]], cli_repeat: int | None) -> list[Row]:
    """The rows one row stands for (itself alone when it has no sweep)."""
    return list(plan_row(row, cli_sweep, cli_repeat).rows())


def _axes(value: Any, name: str) -> dict[str, list[Any]]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SweepError(name, "must be a JSON object of field: [values]") from None
    if not isinstance(value, dict) or not value:
        raise SweepError(name, "must be a non-empty object of field: [values]")
    for field, values in value.items():
        if field in catalogue.RESERVED_FIELDS or field in SWEEP_FIELDS:
            raise SweepError(f"{name}.{field}", "cannot be swept")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{name}.{field}", "must be a non-empty list of values")
    return dict(value)


def _repeat(value: Any, cli_repeat: int | None) -> int:
    if value is None or value == "":
        return cli_repeat or 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEAT:
        raise SweepError("repeat", f"must be a whole number from 1 to {MAX_REPEAT}")
    return value


def _check_zip(sweep: Mapping[str, list[Any]], zipped: Mapping[str, list[Any]]) -> None:
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise SweepError("zip", f"lists must have the same length (got {sorted(lengths)})")
    overlap = set(sweep) & set(zipped)
    if overlap:
        raise SweepError("zip", f"{sorted(overlap)[0]} is both swept and zipped")


def _combinations(sweep: Mapping[str, list[Any]],
                  zipped: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Each combination of axis values, lazily: sweep axes crossed, zip lists paired."""
    pairs = ([dict(zip(zipped, values, strict=True)) for values in zip(*zipped.values(),
                                                                       strict=True)]
             if zipped else [{}])
    for values in product(*sweep.values()):
        crossed = dict(zip(sweep, values, strict=True))
        for pair in pairs:
            yield {**crossed, **pair}


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
