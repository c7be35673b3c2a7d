"""What every step of the pipeline needs, gathered in one object built once per process.

Steps (worker/submission.py, polling.py, fetching.py, reconciler.py) are plain functions of a
`Runtime` and one `StepRef` (worker/refs.py); the Celery tasks (worker/tasks.py) only build the
runtime and the ref and call them. This module sits below the steps and imports none of them:
what follows an item's end reaches them through the `refill` hook, which the top sets
(worker/wiring.py, and the tests' harnesses). Tests build a runtime from fakes: fakeredis,
`runcomfy.fake.FakeRunComfy`, `MemoryBucket` and `RecordingPublisher`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import structlog

from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.worker import keys
from rcbatch.worker.bucket import Bucket
from rcbatch.worker.pacing import Pacer
from rcbatch.worker.refs import PendingFetch, StepRef
from rcbatch.worker.state import REMOVE, Store

T = TypeVar("T")
#: manifest refreshes of a running batch: one per this many seconds per item (5 s to 30 s)
MANIFEST_SECONDS_PER_ITEM = 0.015


@dataclass(frozen=True)
class Limits:
    """The knobs of the pipeline; defaults are explained where they matter."""

    max_in_flight: int = 32
    submit_rate: float = 20.0
    #: an in-flight slot's lease; refreshed by every poll, so a lost item's slot comes back
    slot_lease: float = 600.0
    #: how long a claimed item may wait for its submit task before the reconciler re-sends it
    claim_due: float = 120.0
    #: how long a submit call may take before a crashed submit counts as uncertain
    submit_due: float = 180.0
    #: slack after a poll's or fetch's countdown before the reconciler re-drives it
    step_grace: float = 60.0
    #: starts of the same step (crashes) before the item fails with kind worker_lost
    max_deliveries: int = 4
    #: transient failures of one step before the item fails
    max_step_errors: int = 8
    max_output_bytes: int = 2 * 1024**3


class Publisher(Protocol):
    """Sends the nudges that make the next step run (Celery in production)."""

    def submit(self, bid: str, iid: str, token: str, countdown: float = 0) -> None:
        """Ask a worker to submit a claimed item."""

    def poll(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Ask a worker to poll an item's remote job."""

    def fetch(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Ask a worker to store an item's outputs."""

    def manifest(self, bid: str, countdown: float = 0) -> None:
        """Ask a worker to rewrite a batch's manifest."""


@dataclass
class RecordingPublisher:
    """A `Publisher` that only records what it was asked to send (for tests)."""

    sent: list[tuple[str, tuple[Any, ...], float]] = field(default_factory=list)

    def submit(self, bid: str, iid: str, token: str, countdown: float = 0) -> None:
        """Record a submit nudge."""
        self.sent.append(("submit", (bid, iid, token), countdown))

    def poll(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Record a poll nudge."""
        self.sent.append(("poll", (bid, iid, seq), countdown))

    def fetch(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Record a fetch nudge."""
        self.sent.append(("fetch", (bid, iid, seq), countdown))

    def manifest(self, bid: str, countdown: float = 0) -> None:
        """Record a manifest nudge."""
        self.sent.append(("manifest", (bid,), countdown))

    def take(self, kind: str | None = None) -> list[tuple[str, tuple[Any, ...], float]]:
        """Remove and return the recorded nudges (of one kind, or all)."""
        taken = [s for s in self.sent if kind is None or s[0] == kind]
        self.sent = [s for s in self.sent if s not in taken]
        return taken


@dataclass
class Runtime:
    """Everything a step needs: state, the API, buckets, the publisher and the clock."""

    store: Store
    client: RunComfyClient
    buckets: Callable[[str], Bucket]
    publisher: Publisher
    limits: Limits = field(default_factory=Limits)
    pacer: Pacer | None = None
    clock: Callable[[], float] = time.time
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    log: Any = field(default_factory=lambda: structlog.get_logger("rcbatch.worker"))
    #: fills the slots freed when items end (`submission.refill`, set by worker/wiring.py);
    #: None: freed slots wait for the next dispatch
    refill: Callable[[Runtime], None] | None = None
    #: set while a refill submits an item in this process (worker/submission.py)
    submitting_inline: bool = False
    #: set while a round runs its polls: the fetches of jobs found finished wait here until
    #: every poll of the round ran (worker/poll_timer.py); None: a poll fetches at once
    fetch_later: list[PendingFetch] | None = None

    def __post_init__(self) -> None:
        if self.pacer is None:
            self.pacer = Pacer(self.store.recent_durations)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine on this process's own event loop (one task at a time)."""
        return self.loop.run_until_complete(awaitable)

    def bucket_for(self, bid: str) -> Bucket:
        """The bucket a batch stores into."""
        record = self.store.batch(bid) or {}
        return self.buckets(record.get("bucket_url", ""))

    def item_log(self, ref: StepRef) -> Any:
        """A logger bound to one item (and its request id when the ref knows it)."""
        bound = self.log.bind(batch_id=ref.bid, item_id=ref.iid)
        return bound.bind(request_id=ref.request_id) if ref.request_id else bound

    def finish(self, ref: StepRef, *, expect: tuple[str, ...], to: str,
               error: dict[str, str] | None = None,
               values: dict[str, Any] | None = None) -> bool:
        """Move an item to a terminal state under the ref's guard, free its slot, and nudge
        what follows."""
        fields: dict[str, Any] = {"finished_at": self.clock(), **(values or {})}
        if error is not None:
            fields["error"] = json.dumps(error)
        ok, before = self.store.transition(ref, expect=expect, to=to, due=REMOVE,
                                           inflight=REMOVE, values=fields)
        if ok:
            if ref.request_id is None:  # the log line names the job, if there is one
                ref = replace(ref, request_id=_text_or_none(
                    self.store.redis.hget(keys.item(ref.bid, ref.iid), "request_id")))
            self.item_log(ref).info("item_" + to, state=to, error=error)
            # a fetching item's slot was freed (and refilled) when its job ended
            self.after_terminal(ref.bid, refill=before != keys.FETCHING)
        return ok

    def after_terminal(self, bid: str, *, refill: bool = True) -> None:
        """An item ended: schedule a manifest refresh (debounced) and fill freed slots."""
        finished, total = self.store.progress(bid)
        if finished:
            self.publisher.manifest(bid, countdown=0)
        else:
            every = manifest_every(total)
            flag = keys.manifest_pending(bid)
            if self.store.redis.set(flag, "1", nx=True, ex=int(every) + 30):
                self.publisher.manifest(bid, countdown=every)
        if refill and self.refill is not None:
            self.refill(self)


def manifest_every(total: int) -> float:
    """Seconds between manifest refreshes of a running batch of `total` items: a refresh
    reads every item, so the interval grows with the batch (5 s to 30 s) to keep its cost
    per item flat (measured: refreshing every 5 s took a third of the workers' CPU at 2,000
    items)."""
    return min(30.0, max(5.0, total * MANIFEST_SECONDS_PER_ITEM))


def _text_or_none(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
