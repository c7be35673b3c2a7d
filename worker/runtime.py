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
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import structlog

from rcbatch.errors import RateLimited, RcbatchError, RetryLater, TransportError
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.worker import keys
from rcbatch.worker.bucket import Bucket
from rcbatch.worker.bucket.base import REFUSED, UNAVAILABLE
from rcbatch.worker.pacing import Pacer
from rcbatch.worker.refs import PendingFetch, StepRef
from rcbatch.worker.state import REMOVE, Store

T = TypeVar("T")
#: manifest refreshes of a running batch: one per this many seconds per item (5 s to 30 s)
MANIFEST_SECONDS_PER_ITEM = 0.015
#: an outage-class failure this long after the first of its streak, with no answer from the
#: service between, pauses the batch (one blip must not stop `rcbatch run`)
OUTAGE_GRACE = 10.0
#: a process records that a service answered a batch at most this often (one write, not one
#: per call)
OK_WRITE_EVERY = 2.0
#: an outage pause lifts only if it is still one (a cancel or a user pause wins)
_LIFT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'paused'
   or redis.call('HGET', KEYS[1], 'pause_kind') ~= 'outage'
   or redis.call('HGET', KEYS[1], 'outage_service') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'pause_kind', '', 'pause_reason', '',
           'outage_service', '', ARGV[1] .. '_ok_at', ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1] .. '_down_since')
return 1
"""


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

    def submit_group(self, claims: Sequence[tuple[str, str, str]]) -> None:
        """Ask a worker to submit several claimed items, (bid, iid, token) each, at once."""

    def poll(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Ask a worker to poll an item's remote job."""

    def polls(self, polls: Sequence[tuple[str, str, int]], countdown: float) -> None:
        """Ask workers to poll several items' remote jobs, (bid, iid, seq) each, in this
        order, all in `countdown` seconds."""

    def fetch(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Ask a worker to store an item's outputs."""

    def manifest(self, bid: str, countdown: float = 0) -> None:
        """Ask a worker to rewrite a batch's manifest."""


@dataclass
class RecordingPublisher:
    """A `Publisher` that only records what it was asked to send (for tests). A group of
    submits is recorded as the submits it carries (harnesses run them one by one, which is
    what a group does, but for sending their API calls together) and in `groups`."""

    sent: list[tuple[str, tuple[Any, ...], float]] = field(default_factory=list)
    groups: list[list[tuple[str, str, str]]] = field(default_factory=list)

    def submit(self, bid: str, iid: str, token: str, countdown: float = 0) -> None:
        """Record a submit nudge."""
        self.sent.append(("submit", (bid, iid, token), countdown))

    def submit_group(self, claims: Sequence[tuple[str, str, str]]) -> None:
        """Record a group of submits, as its submits."""
        self.groups.append(list(claims))
        for claim in claims:
            self.submit(*claim)

    def poll(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Record a poll nudge."""
        self.sent.append(("poll", (bid, iid, seq), countdown))

    def polls(self, polls: Sequence[tuple[str, str, int]], countdown: float) -> None:
        """Record several poll nudges, as the polls they are."""
        for due in polls:
            self.poll(*due, countdown=countdown)

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
    #: (batch, service) -> when this process last recorded that the service answered
    ok_written: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pacer is None:
            self.pacer = Pacer(self.store.recent_durations,
                               refill_times=self.store.recent_refill_times)

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


    def service_down(self, bid: str, service: str, exc: RcbatchError, *,
                     at_once: bool = False) -> bool:
        """Note that `service` ("api" or "bucket", see `outage_service`) could not be reached
        for batch `bid`; pause the batch for the outage once that lasted OUTAGE_GRACE s with
        no answer between (`at_once`: now). True when the batch is paused (for any reason)."""
        now, name = self.clock(), keys.batch(bid)
        state, since, ok = (_text_or_none(v) for v in self.store.redis.hmget(
            name, "state", f"{service}_down_since", f"{service}_ok_at"))
        if state != keys.BATCH_RUNNING:
            return state == keys.BATCH_PAUSED
        if since is None or float(ok or 0) >= float(since):  # a new streak of failures
            self.store.redis.hset(name, f"{service}_down_since", repr(now))
            since = repr(now)
        if now - float(since) < OUTAGE_GRACE and not at_once:
            return False
        reason = self._outage_reason(bid, service, exc)
        self.store.set_batch(bid, state=keys.BATCH_PAUSED, pause_kind=keys.PAUSE_OUTAGE,
                             pause_reason=reason, outage_service=service)
        self.log.bind(batch_id=bid).error("batch_paused", kind=keys.PAUSE_OUTAGE,
                                          reason=reason)
        return True

    def service_ok(self, bid: str, service: str, batch_state: str) -> None:
        """`service` answered a call made for batch `bid` (whose state the step read): end
        its streak of failures, and lift the batch's pause if that service's outage held it."""
        now = self.clock()
        if batch_state == keys.BATCH_PAUSED and self.store.redis.eval(
                _LIFT, 1, keys.batch(bid), service, repr(now)):
            self.ok_written[(bid, service)] = now
            self.log.bind(batch_id=bid).info("batch_resumed", service=service)
            return
        if now - self.ok_written.get((bid, service), 0.0) >= OK_WRITE_EVERY:
            self.ok_written[(bid, service)] = now
            self.store.redis.hset(keys.batch(bid), f"{service}_ok_at", repr(now))

    def _outage_reason(self, bid: str, service: str, exc: RcbatchError) -> str:
        """One line naming the service and its host, never the token."""
        if service == "bucket":
            url = (self.store.batch(bid) or {}).get("bucket_url", "") or "(default)"
            verb = "refuses the outputs" if exc.kind == REFUSED else "is unreachable"
            return f"the bucket {url} {verb} ({_cause(exc)})"
        host = self.client.base_url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
        return f"the RunComfy API at {host} is unreachable ({_cause(exc)})"


def outage_service(exc: BaseException) -> str | None:
    """The service whose outage `exc` shows ("api" or "bucket"), or None: a connection or
    timeout failure of an API call or a 5xx answer; the bucket unreachable or refusing us.
    A 429 is rate limiting, a failed download the CDN's business: neither is an outage."""
    if isinstance(exc, RateLimited) or not isinstance(exc, RcbatchError):
        return None
    if exc.kind in (UNAVAILABLE, REFUSED):
        return "bucket"
    if isinstance(exc, TransportError) and exc.kind != "download":
        return "api"
    if isinstance(exc, RetryLater) and exc.kind == "server_error":
        return "api"
    return None


_CAUSES = (("refused", "connection refused"), ("connect call failed", "connection refused"),
           ("name or service", "DNS lookup failed"), ("name resolution", "DNS lookup failed"),
           ("nodename", "DNS lookup failed"), ("getaddrinfo", "DNS lookup failed"),
           ("certificate", "TLS failure"), ("ssl", "TLS failure"),
           ("connecttimeout", "connection timed out"), ("timed out", "timed out"),
           ("reset", "connection reset"), ("disconnect", "connection lost"))


def _cause(exc: RcbatchError) -> str:
    """A few words on why a service could not be reached."""
    text = exc.message.lower()
    status = re.search(r"HTTP (5\d\d)", exc.message)
    if status:
        return f"HTTP {status.group(1)}"
    if exc.kind == "deadline":
        return "no answer in time"
    for needle, cause in _CAUSES:
        if needle in text:
            return cause
    first = exc.message.splitlines()[0] if exc.message else exc.kind
    return first[:160]


def manifest_every(total: int) -> float:
    """Seconds between manifest refreshes of a running batch of `total` items: a refresh
    reads every item, so the interval grows with the batch (5 s to 30 s) to keep its cost
    per item flat (measured: refreshing every 5 s took a third of the workers' CPU at 2,000
    items)."""
    return min(30.0, max(5.0, total * MANIFEST_SECONDS_PER_ITEM))


def _text_or_none(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
