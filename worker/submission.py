"""Taking pending items into free slots and submitting them to the API, never twice.

The API has no idempotency key, so an item is marked `submitting` (with a fresh attempt id)
before the HTTP call. A submit that failed before the request left (connection refused, 429,
5xx) goes back to `claimed` and is retried; one whose answer was lost after sending (read
timeout, reset, a crash in between) becomes `submit_uncertain` and is never re-sent on its own.

An unreachable API (worker/runtime.py's `outage_service`) never fails an item: its submits are
retried without counting towards `max_step_errors` until the outage pauses the batch, and then
go back to `pending`, to be sent once the pause lifts.

A dispatch nudges the submits of the items it claimed in groups (`submit_group`): one task
runs each item's checks and `submitting` mark in turn, sends their API calls together, then
records each answer, every item under its own guard exactly as `submit` does it alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from celery.exceptions import SoftTimeLimitExceeded

from rcbatch.errors import (
    AccountError,
    RateLimited,
    RcbatchError,
    RetryLater,
    SubmitUncertain,
)
from rcbatch.runcomfy.answers import SubmitAnswer
from rcbatch.worker import keys
from rcbatch.worker.bucket.inputs import PRESIGN_SECONDS, has_refs, presigned_body
from rcbatch.worker.pacing import HOP_SLACK, MAX_POLL_DELAY, MIN_POLL_DELAY, backoff
from rcbatch.worker.refs import FreedSlot, StepRef
from rcbatch.worker.runtime import Runtime, outage_service
from rcbatch.worker.state import REMOVE

#: claimed items one `rcbatch.submit_group` nudge carries (`dispatch`): a worker pays one
#: message for them instead of one each, and their API calls go out together, so a batch's
#: first wave reaches the API sooner
SUBMIT_GROUP = 8


def dispatch(rt: Runtime, limit: int = 200, inline: int = 0,
             freed: FreedSlot | None = None) -> int:
    """Claim pending items of every active batch while slots are free; nudge their submits,
    in groups of up to SUBMIT_GROUP (`submit_group`).

    Up to `inline` of them are submitted right here instead (a slot refilled when a job
    ends: one task less per job; `freed` is that job's slot, whose end paces the refill's
    first poll). Never while this process is already submitting inline, so a run of refused
    items cannot recurse through `finish -> dispatch -> submit`.
    """
    sent, here = 0, list[StepRef]()
    inline = 0 if rt.submitting_inline else inline
    for bid in rt.store.active_batches():
        room = limit - sent
        if room <= 0:
            break
        claimed = [StepRef.claimed(bid, iid, token) for iid, token in rt.store.claim(
            bid, cap=rt.limits.max_in_flight, lease=rt.limits.slot_lease,
            claim_due=rt.limits.claim_due, limit=room)]
        take = max(0, inline - len(here))
        here += claimed[:take]
        _nudge_in_groups(rt, claimed[take:])
        sent += len(claimed)
    for ref in here:
        _submit_inline(rt, ref, freed)
    return sent


def _nudge_in_groups(rt: Runtime, refs: Sequence[StepRef]) -> None:
    """Nudge the submits of claimed items, SUBMIT_GROUP to a message (one alone as a plain
    submit)."""
    for start in range(0, len(refs), SUBMIT_GROUP):
        group = refs[start:start + SUBMIT_GROUP]
        if len(group) == 1:
            rt.publisher.submit(group[0].bid, group[0].iid, group[0].token)
        else:
            rt.publisher.submit_group([(r.bid, r.iid, r.token) for r in group])


def refill(rt: Runtime) -> None:
    """Fill the slot an ended item freed, submitting one item in this process (the runtime's
    `refill` hook, which worker/wiring.py sets)."""
    dispatch(rt, inline=1)


def _submit_inline(rt: Runtime, ref: StepRef, freed: FreedSlot | None = None) -> None:
    """Submit a claimed item in this process; if that breaks, leave it to a nudge (the token
    guard makes a second submit of the same claim a no-op once it has been sent)."""
    rt.submitting_inline = True
    try:
        submit(rt, ref, freed)
    except Exception as exc:  # a bug or Redis gone: the caller's own step must go on
        rt.item_log(ref).warning("inline_submit_failed", error=type(exc).__name__)
        rt.publisher.submit(ref.bid, ref.iid, ref.token)
    finally:
        rt.submitting_inline = False


def submit(rt: Runtime, ref: StepRef, freed: FreedSlot | None = None) -> None:
    """Submit one claimed item, guarded by its dispatch token (`StepRef.claimed`), into
    `freed` when it refills the slot of a job seen done."""
    sending = _ready(rt, ref)
    if sending is None or not _replicated(rt, [sending]):
        return
    if freed is not None:
        sending = replace(sending, freed=freed)
    try:
        answer = rt.run(rt.client.submit(sending.model, sending.body))
    except RcbatchError as exc:
        _settle(rt, sending, exc)
    else:
        _settle(rt, sending, answer)


def submit_group(rt: Runtime, refs: Sequence[StepRef]) -> None:
    """Submit several claimed items from one task (a dispatch's group): each is checked and
    marked `submitting` exactly as `submit` does, then their API calls go out together, then
    each answer is recorded. An item whose own step breaks (a bug, Redis gone) is left to
    its deadline, as after a lost nudge, and the others go on."""
    ready: list[_Sending] = []

    def prepare(ref: StepRef) -> None:
        sending = _ready(rt, ref)
        if sending is not None:
            ready.append(sending)

    for ref in refs:
        isolated(rt, ref, "group_submit_failed", functools.partial(prepare, ref))
    ready = _replicated(rt, ready)
    answers = rt.run(_send_together(rt, ready))
    unexpected: BaseException | None = None
    for sending, answer in zip(ready, answers, strict=True):
        if isinstance(answer, SubmitAnswer | RcbatchError):
            isolated(rt, sending.ref, "group_submit_failed",
                     functools.partial(_settle, rt, sending, answer))
            continue
        # as in `submit`: the item stays `submitting` (it may have been sent) and the
        # reconciler makes it submit_uncertain once its deadline passes
        unexpected = unexpected or answer
        rt.item_log(sending.ref).warning("submit_failed", error=type(answer).__name__)
    if unexpected is not None:
        raise unexpected


async def _send_together(rt: Runtime,
                         ready: list[_Sending]) -> list[SubmitAnswer | BaseException]:
    """Each item's API call, all in flight at once: its answer, or what it raised."""
    return await asyncio.gather(*(rt.client.submit(s.model, s.body) for s in ready),
                                return_exceptions=True)


@dataclass(frozen=True)
class _Sending:
    """A claimed item marked `submitting` (its ref now guarded by the attempt id), with the
    model and the body its API call sends."""

    ref: StepRef
    model: str
    body: dict[str, object]
    #: the slot it refills, if any (`dispatch`)
    freed: FreedSlot | None = None


def _ready(rt: Runtime, ref: StepRef) -> _Sending | None:
    """Check a claimed item and mark it `submitting`; None when it is not to be sent (stale
    nudge, held back, deferred by the rate limit, over budget, failed)."""
    step = rt.store.begin_step(ref, expect=(keys.CLAIMED, keys.SUBMITTING))
    if not step.ok:
        rt.item_log(ref).debug("stale_submit", state=step.state)
        return None
    if step.state == keys.CLAIMED and step.deliveries > rt.limits.max_deliveries:
        # Started this often without ever reaching the API: something kills the worker
        # before the send. Nothing was spent; fail it (retry re-runs it) rather than loop.
        rt.store.refund_cost(ref.bid, ref.iid, float(step.item.get("estimate") or 0.0))
        rt.finish(ref.knowing(step.item), expect=(keys.CLAIMED,), to=keys.FAILED, error={
            "kind": "worker_lost",
            "message": f"submitting crashed a worker {step.deliveries - 1} times; never sent"})
        return None
    if step.state == keys.SUBMITTING:
        # Another copy of this nudge is sending it right now, or one crashed while sending:
        # either way it may have reached the API. Never send again; the reconciler makes it
        # submit_uncertain once its deadline passes without an answer being recorded.
        return None
    if _held_back(rt, ref, step.batch.get("state", "")):
        return None
    wait = rt.store.acquire_submit(rt.limits.submit_rate)
    if wait > 0:
        _defer(rt, ref, wait)
        return None
    if not _within_budget(rt, ref, step.item):
        return None
    return _mark_submitting(rt, ref, step.item)


def isolated(rt: Runtime, ref: StepRef, event: str, step: Callable[[], None]) -> bool:
    """Run one item's part of a task that serves several (a submit group, a poll round);
    False when it broke, which is logged as `event` (the item keeps its deadline), so that
    the others still run. A soft time limit ends the task."""
    try:
        step()
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        rt.item_log(ref).warning(event, error=type(exc).__name__)
        return False
    return True


def _within_budget(rt: Runtime, ref: StepRef, item: dict[str, str]) -> bool:
    """Reserve the item's estimated cost; past the batch's cap, hold the batch."""
    estimate = float(item.get("estimate") or 0.0)
    if rt.store.reserve_cost(ref.bid, ref.iid, estimate):
        return True
    record = rt.store.batch(ref.bid) or {}
    reason = (f"budget reached: ${float(record.get('reserved_cost') or 0):.2f} of "
              f"${float(record.get('max_cost') or 0):.2f} reserved; the rest stays pending")
    rt.store.set_batch(ref.bid, state=keys.BATCH_PAUSED, pause_kind=keys.PAUSE_BUDGET,
                       pause_reason=reason)
    _back_to_pending(rt, ref, keys.CLAIMED)
    return False


def _back_to_pending(rt: Runtime, ref: StepRef, state: str) -> None:
    """Give the item's slot back and queue it again (nothing was sent)."""
    ok, _ = rt.store.transition(ref, expect=(state,), to=keys.PENDING, due=REMOVE,
                                inflight=REMOVE)
    if ok:
        rt.store.requeue(ref.bid, ref.iid)


def _refund(rt: Runtime, ref: StepRef) -> None:
    """Give back the item's reserved cost: its submission created no job."""
    estimate = float((rt.store.item(ref.bid, ref.iid) or {}).get("estimate") or 0.0)
    rt.store.refund_cost(ref.bid, ref.iid, estimate)


def _held_back(rt: Runtime, ref: StepRef, batch_state: str) -> bool:
    """A cancelled or paused batch takes its claimed items back."""
    if batch_state == keys.BATCH_CANCELLED:
        rt.finish(ref, expect=(keys.CLAIMED,), to=keys.CANCELLED)
        return True
    if batch_state in (keys.BATCH_PAUSED, keys.BATCH_SCHEDULED):
        _back_to_pending(rt, ref, keys.CLAIMED)
        return True
    return False


def _defer(rt: Runtime, ref: StepRef, wait: float) -> None:
    due = rt.clock() + wait + rt.limits.claim_due
    rt.store.transition(ref, expect=(keys.CLAIMED,), due=due, values={"deliveries": 0})
    rt.publisher.submit(ref.bid, ref.iid, ref.token, countdown=wait)


def _body_to_send(rt: Runtime, ref: StepRef, item: dict[str, str]) -> dict[str, object] | None:
    """The item's input with its bucket references (local files uploaded at registration,
    other batches' outputs) replaced by fresh pre-signed URLs; None (the item failed, nothing
    sent) when its bucket cannot sign them."""
    body: dict[str, object] = json.loads(item["input"])
    if not has_refs(body):
        return body
    try:
        bucket = rt.bucket_for(ref.bid)
        return presigned_body(body, ref.bid,
                              lambda key: bucket.presigned_url(key, expires=PRESIGN_SECONDS))
    except RcbatchError as exc:
        _refund(rt, ref)
        rt.finish(ref, expect=(keys.CLAIMED,), to=keys.FAILED, error=exc.as_record())
        return None


def _mark_submitting(rt: Runtime, ref: StepRef, item: dict[str, str]) -> _Sending | None:
    """Mark the item `submitting` under a fresh attempt id, the body it sends recorded when
    it differs from its input; None when the mark did not take (or the body could not be
    built: the item failed)."""
    body = _body_to_send(rt, ref, item)
    if body is None:
        return None
    attempt = uuid.uuid4().hex
    now = rt.clock()
    values: dict[str, object] = {"attempt_id": attempt, "+attempts": 1, "submitting_at": now}
    if has_refs(json.loads(item["input"])):  # the manifest shows the body as it was sent
        values["sent_input"] = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    ok, _ = rt.store.transition(
        ref, expect=(keys.CLAIMED,), to=keys.SUBMITTING, due=now + rt.limits.submit_due,
        values=values)
    if not ok:
        return None
    # what the item is guarded by from now on
    return _Sending(ref.guarded("attempt_id", attempt), item["model"], body)


def _replicated(rt: Runtime, ready: list[_Sending]) -> list[_Sending]:
    """The items whose `submitting` marks reached a replica (one WAIT for all of them); when
    they did not, none is sent and each is retried later."""
    if not ready or rt.store.on_a_replica():
        return ready
    for sending in ready:
        _retry_submit(rt, sending.ref, RetryLater(
            "the submitting mark has not reached a replica yet", kind="replication"))
    return []


def _settle(rt: Runtime, sending: _Sending, outcome: SubmitAnswer | RcbatchError) -> None:
    """Record what the API answered a submit (or why it could not be asked)."""
    ref = sending.ref
    if isinstance(outcome, SubmitUncertain):
        _uncertain(rt, ref, outcome.message)
    elif isinstance(outcome, RetryLater):
        _retry_submit(rt, ref, outcome)
    elif isinstance(outcome, AccountError):
        _refund(rt, ref)
        pause_batch(rt, ref.bid, outcome)
        _back_to_pending(rt, ref, keys.SUBMITTING)
    elif isinstance(outcome, RcbatchError):
        _refund(rt, ref)  # refused: no job, no cost
        rt.finish(ref, expect=(keys.SUBMITTING,), to=keys.FAILED, error=outcome.as_record())
    else:
        rt.service_ok(ref.bid, "api", keys.BATCH_RUNNING)
        _accepted(rt, sending, outcome.request_id)
        rt.item_log(ref).info("item_submitted", request_id=outcome.request_id,
                              state=keys.SUBMITTED)


def _accepted(rt: Runtime, sending: _Sending, request_id: str) -> None:
    now, ref, freed = rt.clock(), sending.ref, sending.freed
    # a refill of its own model's slot records that slot's end, to learn refill times
    freed_at = freed.ended_at if freed is not None and freed.model == sending.model else None
    delay, hop = _first_poll(rt, sending.model, None if freed_at is None else now - freed_at)
    ok, _ = rt.store.transition(
        ref, expect=(keys.SUBMITTING,), to=keys.SUBMITTED, due=now + hop + rt.limits.step_grace,
        inflight=now + rt.limits.slot_lease,
        values={"request_id": request_id, "submitted_at": now, "seq": 1, "deliveries": 0,
                "polls": 0, "step_errors": 0, "outage_errors": 0, "poll_at": now + delay,
                "slot_freed_at": "" if freed_at is None else freed_at})
    if ok:
        rt.publisher.poll(ref.bid, ref.iid, 1, countdown=hop)


def _first_poll(rt: Runtime, model: str, lead: float | None) -> tuple[float, float]:
    """(delay to the first poll, delay to the first wake-up) of a job just accepted: a
    refill submitted `lead` s after the end that freed its slot is aimed by the model's
    refill times when those are a wave's (`Pacer.refill_aim`), any other job by the
    model's durations."""
    assert rt.pacer is not None
    aim = None if lead is None else rt.pacer.refill_aim(model)
    if aim is not None and lead is not None:
        delay = max(MIN_POLL_DELAY, aim - lead)
        return delay, min(delay, MAX_POLL_DELAY)
    delay = rt.pacer.first_delay(model)
    hop = min(delay, MAX_POLL_DELAY)  # a longer delay is slept in hops (worker/polling.py)
    wake = rt.pacer.first_wake(model)
    if wake is not None and wake < hop - HOP_SLACK:
        hop = wake  # planned on a short history: wake at its earliest end to aim again
    return delay, hop


def _retry_submit(rt: Runtime, ref: StepRef, exc: RetryLater) -> None:
    item = rt.store.item(ref.bid, ref.iid) or {}
    service = outage_service(exc)
    if service is not None and rt.service_down(ref.bid, service, exc):
        # Never sent, and the batch waits for the API: the item waits too, without its slot.
        _refund(rt, ref)
        _back_to_pending(rt, ref, keys.SUBMITTING)
        return
    # An outage's failures are counted apart: they only space the retries out.
    counter = "step_errors" if service is None else "outage_errors"
    errors = int(item.get(counter, 0)) + 1
    if isinstance(exc, RateLimited):
        rt.store.cool_down(exc.retry_after or 5.0)
    if service is None and errors > rt.limits.max_step_errors:
        _refund(rt, ref)
        rt.finish(ref, expect=(keys.SUBMITTING,), to=keys.FAILED, error=exc.as_record())
        return
    delay = backoff(errors, retry_after=exc.retry_after)
    token = item.get("token", "")
    ok, _ = rt.store.transition(
        ref, expect=(keys.SUBMITTING,), to=keys.CLAIMED,
        due=rt.clock() + delay + rt.limits.claim_due,
        values={counter: errors, "last_error": exc.as_record(), "deliveries": 0})
    if ok:
        rt.item_log(ref).warning("submit_retry", kind=exc.kind, delay=round(delay, 2))
        rt.publisher.submit(ref.bid, ref.iid, token, countdown=delay)


def _uncertain(rt: Runtime, ref: StepRef, message: str) -> None:
    rt.finish(ref, expect=(keys.SUBMITTING,), to=keys.SUBMIT_UNCERTAIN,
              error={"kind": "submit_uncertain", "message": message})


def pause_batch(rt: Runtime, bid: str, exc: AccountError) -> None:
    """Hold a batch's submissions after the API refused the token or the account."""
    rt.store.set_batch(bid, state=keys.BATCH_PAUSED, pause_kind=keys.PAUSE_ACCOUNT,
                       pause_reason=exc.message or exc.kind)
    rt.log.bind(batch_id=bid).error("batch_paused", kind=exc.kind, reason=exc.message)
