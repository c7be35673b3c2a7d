"""Figures, their targets, and the Markdown tables the benchmarks print."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """One measured figure, its unit-formatted text and the target it is held against."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    #: True when the figure meets its target; None when there is no target (context only)
    ok: bool | None = None
    digits: int = 2

    def text(self) -> str:
        """The value with its unit, or "n/a"."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        number = f"{self.value:,.{self.digits}f}"
        return f"{number} {self.unit}".strip() if self.unit not in ("x", "%") else \
            f"{number}{self.unit}"

    def verdict(self) -> str:
        """"met", "MISSED" or "" (no target)."""
        if self.ok is None:
            return ""
        return "met" if self.ok else "MISSED"


def at_most(name: str, value: float | None, limit: float, unit: str = "", *,
            shown: str | None = None, digits: int = 2) -> Figure:
    """A figure whose target is `value <= limit`."""
    ok = None if value is None else value <= limit
    target = f"<= {shown if shown is not None else _num(limit)}{_sep(unit)}{unit}"
    return Figure(name, value, unit, target, ok, digits)


def at_least(name: str, value: float | None, limit: float, unit: str = "", *,
             shown: str | None = None, digits: int = 2) -> Figure:
    """A figure whose target is `value >= limit`."""
    ok = None if value is None else value >= limit
    target = f">= {shown if shown is not None else _num(limit)}{_sep(unit)}{unit}"
    return Figure(name, value, unit, target, ok, digits)


def info(name: str, value: float | None, unit: str = "", digits: int = 2) -> Figure:
    """A figure shown for context, with no target."""
    return Figure(name, value, unit, "", None, digits)


def _num(value: float) -> str:
    return f"{value:,g}" if abs(value) < 1e6 else f"{value:,.0f}"


def _sep(unit: str) -> str:
    return "" if unit in ("", "x", "%") else " "


@dataclass
class Section:
    """One benchmark's outcome: what ran (setup) and its figures."""

    title: str
    setup: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *figures: Figure) -> None:
        """Append figures."""
        self.figures.extend(figures)


def markdown(sections: Sequence[Section], *, heading: str = "###") -> str:
    """The sections as Markdown: a heading, the setup line, then one table each."""
    parts = []
    for section in sections:
        rows = [f"{heading} {section.title}", "", section.setup, "",
                "| figure | measured | target | |", "| --- | --: | --- | --- |"]
        rows += [f"| {f.name} | {f.text()} | {f.target} | {f.verdict()} |"
                 for f in section.figures]
        rows += [f"\n{note}" for note in section.notes]
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def summary(sections: Sequence[Section]) -> str:
    """One Markdown table of every figure that has a target, across all sections."""
    rows = ["| benchmark | figure | measured | target | |", "| --- | --- | --: | --- | --- |"]
    for section in sections:
        for f in section.figures:
            if f.ok is not None:
                rows.append(f"| {section.title} | {f.name} | {f.text()} | {f.target} | "
                            f"{f.verdict()} |")
    return "\n".join(rows) + "\n"


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (linear interpolation) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN when empty."""
    return sum(values) / len(values) if values else math.nan


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


Printer = Callable[[str], None]


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain Markdown table: the header, then right-aligned columns after the first."""
    lines = ["| " + " | ".join(head) + " |",
             "| --- |" + " --: |" * (len(head) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
