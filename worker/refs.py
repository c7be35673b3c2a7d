"""Values that name one item at one step; the bottom of the worker, importing none of it.

A step function takes the services (`Runtime`) and one `StepRef`: which item, and the guard
that every write of that step checks (worker/state.py). The Celery tasks build the ref from a
message (worker/tasks.py); a step hands the next one on with `next_seq()` or `guarded()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class StepRef:
    """One item at one step: who it is, and the guard every write of that step checks."""

    bid: str
    iid: str
    #: ("seq", "7") a poll or fetch, ("token", t) a claimed submit, ("attempt_id", a) a submit
    #: under way; None: no guard (only the expected state is checked)
    guard: tuple[str, str] | None = None
    #: known once submitted; bound into every log line of the step
    request_id: str | None = None

    @classmethod
    def at_seq(cls, bid: str, iid: str, seq: int) -> StepRef:
        """An item at poll or fetch step `seq` (what a poll or fetch message carries)."""
        return cls(bid, iid, ("seq", str(seq)))

    @classmethod
    def claimed(cls, bid: str, iid: str, token: str) -> StepRef:
        """A claimed item whose submit is guarded by its dispatch token."""
        return cls(bid, iid, ("token", token))

    @property
    def seq(self) -> int:
        """The step sequence of a poll or fetch ref."""
        return int(self._guard_value("seq"))

    @property
    def token(self) -> str:
        """The dispatch token of a claimed item's ref."""
        return self._guard_value("token")

    def next_seq(self) -> StepRef:
        """The same item at its following poll/fetch step (what a reschedule publishes)."""
        return replace(self, guard=("seq", str(self.seq + 1)))

    def guarded(self, name: str, value: str) -> StepRef:
        """The same item under another guard (a submit once its attempt id is written)."""
        return replace(self, guard=(name, value))

    def knowing(self, item: Mapping[str, str]) -> StepRef:
        """The same ref with the request id of the item's record, when it has one."""
        return replace(self, request_id=item.get("request_id") or None)

    def _guard_value(self, name: str) -> str:
        if self.guard is None or self.guard[0] != name:
            raise ValueError(f"not a {name}-guarded step: {self.guard}")
        return self.guard[1]


@dataclass(frozen=True)
class PendingFetch:
    """The fetch of a job a poll found finished, ready to run: its item was moved to
    `fetching` at step `ref`, with this start already counted (worker/polling.py); `item` is
    its record as of that step, `batch` the few batch fields `begin_step` reads."""

    ref: StepRef
    item: dict[str, str]
    batch: dict[str, str]


@dataclass(frozen=True, slots=True)
class FreedSlot:
    """The slot of a job just seen done, handed to the item submitted in its place (a
    refill, worker/submission.py): the job's model and when it ended, by the runtime's clock
    (its submission time plus its duration as the API's timestamps tell it)."""

    model: str
    ended_at: float
