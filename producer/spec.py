"""Turning rows into validated items: model rules (from the catalogue), ids, duplicates.

An item's id is the row's own `id` when given, otherwise a stable hash of its model and
input, so the same spec is the same item whichever file (CSV or JSONL) it comes from.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcbatch.errors import InputError, Problem, ValidationFailed
from rcbatch.producer.local_inputs import LocalFiles, LocalInput, with_placeholders
from rcbatch.producer.problems import ProblemTally, RowSizes, collapse
from rcbatch.producer.reader import ROW_FIELD, Row, display_name_of, iter_rows, one_line
from rcbatch.producer.stdin import STDIN_NAME, LineSource
from rcbatch.producer.sweep import SweepError, SweepPlan, plan_row, sweep_suffix
from rcbatch.runcomfy import catalogue

MAX_ID_LENGTH = 128
#: items one submission may expand to unless told otherwise (Settings.max_items' default)
DEFAULT_MAX_ITEMS = 100_000
MAX_ITEMS_SETTING = "RCBATCH_MAX_ITEMS"

_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_TAGS = {"text-to-image": "t2i", "edit": "edit", "image-to-video": "i2v",
         "edit-sequential": "seq"}


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One item to generate: `input` is the body sent (the API applies defaults), except
    that bucket references (local files, a parent batch's outputs) are pre-signed at submit."""

    item_id: str
    file: str
    line: int
    model: str
    input: dict[str, Any]
    #: the sweep axes and repeat index this item was expanded from, if any
    sweep: dict[str, Any] | None = None
    #: local files of its image field, uploaded at registration (producer/local_inputs.py)
    local_inputs: tuple[LocalInput, ...] = ()
    #: for an item of a derived batch: `{"batch_id", "item_id", "output": n}` it comes from
    parent: dict[str, Any] | None = None
    #: a model not in the catalogue, let through to the API's own validation
    unchecked: bool = False


@dataclass
class CheckResult:
    """Items of a submission, its problems (errors: reject all) and warnings (go ahead)."""

    items: list[ItemSpec] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    #: (file, line) -> items expanded from that row, for rows that gave more than one
    row_sizes: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no row has an error."""
        return not self.problems

    def by_model(self) -> dict[str, int]:
        """Item count per model id, most frequent first."""
        return dict(Counter(item.model for item in self.items).most_common())

    def summary(self) -> dict[str, Any]:
        """`{"items": N, "by_model": {model: N}}` for `rcbatch validate --json`."""
        return {"items": len(self.items), "by_model": self.by_model()}

    def as_json(self) -> dict[str, Any]:
        """The whole `validate --json` answer: the summary plus errors and warnings."""
        return {**self.summary(), "errors": [p.as_dict() for p in self.problems],
                "warnings": [p.as_dict() for p in self.warnings]}

    def add_problems(self, errors: Iterable[Problem],
                     warnings: Iterable[Problem] = ()) -> None:
        """Add problems found per item later (preflight): repeats within a row merged."""
        self.problems += collapse(errors, self.row_sizes)
        self.warnings += collapse(warnings, self.row_sizes)

    def raise_if_invalid(self) -> None:
        """Raise `ValidationFailed` listing every problem when there is any."""
        if self.problems:
            raise ValidationFailed(self.problems)


def model_tag(model: str) -> str:
    """The short prefix of generated ids for `model` (`t2i`, `edit`, `i2v`, `seq`)."""
    return _TAGS.get(model.rsplit("/", 1)[-1], "item")


def stable_id(model: str, body: dict[str, Any]) -> str:
    """The id of an item without one: model tag plus a hash of model and canonical input."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    payload = (model + "\n" + canonical).encode("utf-8", "surrogatepass")
    return f"{model_tag(model)}-{hashlib.sha256(payload).hexdigest()[:16]}"


def check_rows(rows: Iterable[Row], *, allow_loopback_http: bool = True) -> CheckResult:
    """Validate every row against its model and the id rules; never raises for bad rows.

    Duplicate ids (given or generated) are reported on the later row, naming the earlier.
    """
    checker = _Checker(allow_loopback_http)
    for row in rows:
        checker.check(row)
    return checker.finish()


def read_and_check(paths: Sequence[Path | str], *, default_model: str | None = None,
                   allow_loopback_http: bool = True,
                   sweep: Mapping[str, list[Any]] | None = None,
                   repeat: int | None = None, max_items: int = DEFAULT_MAX_ITEMS,
                   stdin: LineSource | None = None,
                   unchecked_models: bool = False) -> CheckResult:
    """Read every file of one submission, expand its sweeps, and check all rows together.

    `sweep` and `repeat` apply to every row (the `--sweep` and `--repeat` options). The
    path `-` is standard input (`stdin` when given), named `<stdin>` in problems.
    Raises `InputError` as soon as the rows read so far would expand to more than
    `max_items` items, before expanding the row that passes it. With `unchecked_models`, a
    row naming a model the catalogue does not know (but a well-formed id) is not checked
    here: the API validates it, and its item is marked `unchecked`. Problems come sorted by
    file (in the order given) and line, each distinct one once (`SharedProblem` when several
    items of a swept row share it).
    """
    read_problems: list[Problem] = []
    checker = _Checker(allow_loopback_http, unchecked_models=unchecked_models)
    budget = _ItemBudget(max_items)
    # Row by row, so only the items are ever held, never every row as well (bench/enqueue.py).
    for path in paths:
        for row in iter_rows(Path(path), default_model=default_model, problems=read_problems,
                             stdin=stdin):
            for one in _expand(row, sweep, repeat, budget, read_problems):
                checker.check(one)
    checker.errors.extend(read_problems)
    checked = checker.finish(budget.row_sizes)
    order: dict[str, int] = {}
    for index, path in enumerate(paths):
        order.setdefault(display_name_of(path), index)

    def key(problem: Problem) -> tuple[int, int]:
        return order.get(problem.file, len(order)), problem.line

    checked.problems.sort(key=key)
    checked.warnings.sort(key=key)
    return checked


def _expand(row: Row, sweep: Mapping[str, list[Any]] | None, repeat: int | None,
            budget: _ItemBudget, problems: list[Problem]) -> Iterator[Row]:
    """The rows `row` expands to, counted against the budget before any is built."""
    try:
        plan = plan_row(row, sweep, repeat)
    except SweepError as exc:
        problems.append(exc.problem(row))
        return iter(())
    budget.take(plan)
    return plan.rows()


class _ItemBudget:
    """The running count of items of one submission, refused past `max_items`."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.used = 0
        self.row_sizes: dict[tuple[str, int], int] = {}

    def take(self, plan: SweepPlan) -> None:
        """Count `plan`'s items; InputError (naming its row) when they pass the cap."""
        size, row = plan.size, plan.row
        if self.used + size > self.max_items:
            raise InputError(
                f"{row.file}:{row.line}: {plan.field}: the submission passes "
                f"{self.max_items} items at this row ({self.used} before it, {size} from it); "
                f"that is the most one submission may have ({MAX_ITEMS_SETTING}): split the "
                "input or raise the setting")
        self.used += size
        if size > 1:
            key = (row.file, row.line)
            self.row_sizes[key] = self.row_sizes.get(key, 0) + size


class _Checker:
    """Checks rows one by one, remembering the ids seen so far."""

    def __init__(self, allow_loopback_http: bool, *, unchecked_models: bool = False) -> None:
        self.allow_loopback_http = allow_loopback_http
        self.unchecked_models = unchecked_models
        self.items: list[ItemSpec] = []
        # Tallies, not lists: the expansions of a swept row share its line and, mostly,
        # its problems; each distinct problem is kept once with how many items had it.
        self.errors = ProblemTally()
        self.warnings = ProblemTally()
        self.seen: dict[str, tuple[str, int, bool]] = {}  # id -> file, line, generated
        self.local_files = LocalFiles()

    def finish(self, row_sizes: RowSizes | None = None) -> CheckResult:
        """The items and the distinct problems and warnings of every row checked."""
        sizes = row_sizes or {}
        return CheckResult(self.items, self.errors.problems(sizes),
                           self.warnings.problems(sizes), dict(sizes))

    def check(self, row: Row) -> None:
        """Check one row; append its item, or its problems."""
        before = self.errors.added
        model = row.data.get("model")
        body = {k: v for k, v in row.data.items() if k not in catalogue.RESERVED_FIELDS}
        given_id = self._given_id(row)
        local = self._local_inputs(row, model, body)
        self._check_model(row, model, body)
        if given_id is not None:
            self._claim(row, given_id, generated=False)
        clean = not row.rejected_fields and self.errors.added == before
        if clean and isinstance(model, str) and (model in catalogue.MODELS
                                                 or self._unchecked(model)):
            self._add_item(row, model, body, given_id, tuple(local))

    def _unchecked(self, model: str) -> bool:
        """Whether an unknown model goes through unchecked (`--unchecked-model`)."""
        return self.unchecked_models and model not in catalogue.MODELS and _model_id_ok(model)

    def _local_inputs(self, row: Row, model: Any, body: dict[str, Any]) -> list[LocalInput]:
        """Read the local image files `body` names (replacing them with references) and
        report their problems like preflight's."""
        base = Path.cwd() if row.file == STDIN_NAME else Path(row.file).parent
        found, issues = self.local_files.resolve(model, body, base)
        for issue in issues:
            problem = Problem(row.file, row.line, one_line(issue.field), one_line(issue.message))
            (self.warnings if issue.severity == "warning" else self.errors).add(problem)
        return found

    def _check_model(self, row: Row, model: Any, body: dict[str, Any]) -> None:
        """Report a missing model, else everything the catalogue finds (unknown model too)."""
        if model is None or model == "":
            known = ", ".join(sorted(catalogue.MODELS))
            self._problem(row, "model", f"missing: add a model column or field, or pass "
                          f"--model (known models: {known})")
        elif isinstance(model, str) and self._unchecked(model):
            return  # the API's own validation will judge the body
        else:
            self._validate(row, model, body)

    def _add_item(self, row: Row, model: str, body: dict[str, Any], item_id: str | None,
                  local: tuple[LocalInput, ...] = ()) -> None:
        """Append the item of a valid row, unless its generated id repeats an earlier row's."""
        if item_id is None:
            item_id = stable_id(model, body)
            if row.sweep and row.sweep.get("repeat"):
                item_id += f"-r{row.sweep['repeat']}"
            if not self._claim(row, item_id, generated=True):
                return
        self.items.append(ItemSpec(item_id, row.file, row.line, sys.intern(model), body,
                                   row.sweep, local, unchecked=model not in catalogue.MODELS))

    def _problem(self, row: Row, field_name: str, message: str) -> None:
        self.errors.add(Problem(row.file, row.line, one_line(field_name), one_line(message)))

    def _given_id(self, row: Row) -> str | None:
        """The row's own id as a string, None when not given (or reported invalid)."""
        value = row.data.get("id")
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        message = _id_problem(value)
        if message is None:
            # Every expansion of a swept row needs its own id: the row's id plus a stable
            # suffix naming its combination.
            return f"{value}-{sweep_suffix(row.sweep)}" if row.sweep else str(value)
        self._problem(row, "id", message)
        return None

    def _validate(self, row: Row, model: Any, body: dict[str, Any]) -> None:
        """Turn the catalogue's issues with `body` into problems and warnings."""
        issues = catalogue.validate(model, with_placeholders(body),
                                    allow_loopback_http=self.allow_loopback_http)
        for issue in issues:
            if issue.field.split("[", 1)[0] in row.rejected_fields:
                continue  # the reader already said why this field is unusable
            problem = Problem(row.file, row.line, one_line(issue.field or ROW_FIELD),
                              one_line(issue.message))
            (self.warnings if issue.severity == "warning" else self.errors).add(problem)

    def _claim(self, row: Row, item_id: str, *, generated: bool) -> bool:
        """Register `item_id` for `row`; False (and a problem) when an earlier row has it."""
        earlier = self.seen.get(item_id)
        if earlier is None:
            self.seen[item_id] = (row.file, row.line, generated)
            return True
        file, line, earlier_generated = earlier
        if generated and earlier_generated:
            self._problem(row, ROW_FIELD, f"same input as {file}:{line}; give each an id or "
                          "use a sweep with repeat")
        else:
            self._problem(row, "id", f"duplicate id {item_id!r}: already used at {file}:{line}")
        return False


_MODEL_ID = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+")


def _model_id_ok(model: str) -> bool:
    """A model id the API could route (`owner/name[/task]`, no dot segments)."""
    return bool(_MODEL_ID.fullmatch(model)) and all(
        part not in (".", "..") for part in model.split("/"))


def _id_problem(value: Any) -> str | None:
    """Why `value` cannot be an item id, or None when it can."""
    if not isinstance(value, str):
        return "must be a string or an integer"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
    if not _ID_RE.fullmatch(value):
        return "may use only letters A-Z and a-z, digits 0-9, '.', '_' and '-'"
    if not any(c.isalnum() for c in value):
        return "must contain a letter or a digit"
    return None
