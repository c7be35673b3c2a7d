"""Problems of a submission, each distinct one reported once, with how many items share it.

A swept row stands for many items with one FILE:LINE, so a value they all carry (a bad image
URL, a wrong size) is wrong in every one of them; it is one problem to fix, reported once as
`FILE:LINE: FIELD: message (all 4 items of this row)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rcbatch.errors import Problem

#: (file, line) -> how many items that row expanded to (only rows that stand for several)
RowSizes = Mapping[tuple[str, int], int]


@dataclass(frozen=True)
class SharedProblem(Problem):
    """A problem `count` items of one row share (`row_items`: how many the row gave)."""

    count: int = 1
    row_items: int = 1

    def as_dict(self) -> dict[str, object]:
        """The JSON form, with `count` and `row_items` added."""
        return {**super().as_dict(), "count": self.count, "row_items": self.row_items}


class ProblemTally:
    """Problems in the order first found, each distinct one kept once with its count."""

    def __init__(self) -> None:
        self._counts: dict[Problem, int] = {}
        #: every problem ever added, repeats included (to tell whether a row added any)
        self.added = 0

    def add(self, problem: Problem) -> None:
        """Count one occurrence of `problem`."""
        self._counts[problem] = self._counts.get(problem, 0) + 1
        self.added += 1

    def extend(self, problems: Iterable[Problem]) -> None:
        """Count every problem of `problems`."""
        for problem in problems:
            self.add(problem)

    def problems(self, row_sizes: RowSizes) -> list[Problem]:
        """One problem per distinct one; repeated ones say how many items of the row share it."""
        return [_shared(p, n, row_sizes) if n > 1 else p for p, n in self._counts.items()]


def collapse(problems: Iterable[Problem], row_sizes: RowSizes) -> list[Problem]:
    """`problems` with repeats merged into one `SharedProblem` each, in first-found order.

    For problems found per item (preflight) of rows sized in `row_sizes`
    (`CheckResult.row_sizes`).
    """
    tally = ProblemTally()
    tally.extend(problems)
    return tally.problems(row_sizes)


def _shared(problem: Problem, count: int, row_sizes: RowSizes) -> SharedProblem:
    size = row_sizes.get((problem.file, problem.line), 1)
    if count == size:
        note = f"all {count} items of this row"
    elif count < size:
        note = f"{count} of {size} items of this row"
    else:  # the same file given twice: more than the row stands for
        note = f"{count} times"
    return SharedProblem(problem.file, problem.line, problem.field,
                         f"{problem.message} ({note})", count, size)
