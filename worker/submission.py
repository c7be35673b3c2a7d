"""Taking pending items into free slots and submitting them to the API, never twice.

The API has no idempotency key, so an item is marked `submitting` (with a fresh attempt id)
before the HTTP call. A submit that failed before the request left (connection refused, 429,
5xx) goes back to `claimed` and is retried; one whose answer was lost after sending (read
timeout, reset, a crash in between) becomes `submit_uncertain` and is never re-sent on its own.
"""

from __future__ import annotations

import json
import uuid

from rcbatch.errors import (
    AccountError,
    RateLimited,
    RcbatchError,
    RetryLater,
    SubmitUncertain,
)
from rcbatch.worker import keys
from rcbatch.worker.pacing import MAX_POLL_DELAY, backoff
from rcbatch.worker.runtime import Runtime
from rcbatch.worker.state import REMOVE


def dispatch(rt: Runtime, limit: int = 200, inline: int = 0) -> int:
    """Claim pending items of every active batch while slots are free; nudge their submits.

    Up to `inline` of them are submitted right here instead (a slot refilled when a job
    ends: one task less per job). Never while this process is already submitting inline,
    so a run of refused items cannot recurse through `finish -> dispatch -> submit`.
    """
    sent, here = 0, list[tuple[str, str, str]]()
    inline = 0 if rt.submitting_inline else inline
    for bid in rt.store.active_batches():
        room = limit - sent
        if room <= 0:
            break
        claimed = rt.store.claim(bid, cap=rt.limits.max_in_flight, lease=rt.limits.slot_lease,
                                 claim_due=rt.limits.claim_due, limit=room)
        for iid, token in claimed:
            if len(here) < inline:
                here.append((bid, iid, token))
            else:
                rt.publisher.submit(bid, iid, token)
        sent += len(claimed)
    for bid, iid, token in here:
        _submit_inline(rt, bid, iid, token)
    return sent


def _submit_inline(rt: Runtime, bid: str, iid: str, token: str) -> None:
    """Submit a claimed item in this process; if that breaks, leave it to a nudge (the token
    guard makes a second submit of the same claim a no-op once it has been sent)."""
    rt.submitting_inline = True
    try:
        submit(rt, bid, iid, token)
    except Exception as exc:  # a bug or Redis gone: the caller's own step must go on
        rt.item_log(bid, iid).warning("inline_submit_failed", error=type(exc).__name__)
        rt.publisher.submit(bid, iid, token)
    finally:
        rt.submitting_inline = False


def submit(rt: Runtime, bid: str, iid: str, token: str) -> None:
    """Submit one claimed item, guarded by its dispatch token."""
    step = rt.store.begin_step(bid, iid, expect=(keys.CLAIMED, keys.SUBMITTING),
                               guard=("token", token))
    if not step.ok:
        rt.item_log(bid, iid).debug("stale_submit", state=step.state)
        return
    if step.state == keys.CLAIMED and step.deliveries > rt.limits.max_deliveries:
        # Started this often without ever reaching the API: something kills the worker
        # before the send. Nothing was spent; fail it (retry re-runs it) rather than loop.
        rt.store.refund_cost(bid, iid, float(step.item.get("estimate") or 0.0))
        rt.finish(bid, iid, expect=(keys.CLAIMED,), to=keys.FAILED, guard=("token", token),
                  item=step.item, error={"kind": "worker_lost", "message": (
                      f"submitting crashed a worker {step.deliveries - 1} times; never sent")})
        return
    if step.state == keys.SUBMITTING:
        # Another copy of this nudge is sending it right now, or one crashed while sending:
        # either way it may have reached the API. Never send again; the reconciler makes it
        # submit_uncertain once its deadline passes without an answer being recorded.
        return
    if _held_back(rt, bid, iid, token, step.batch.get("state", "")):
        return
    wait = rt.store.acquire_submit(rt.limits.submit_rate)
    if wait > 0:
        _defer(rt, bid, iid, token, wait)
        return
    if not _within_budget(rt, bid, iid, token, step.item):
        return
    _send(rt, bid, iid, token, step.item)


def _within_budget(rt: Runtime, bid: str, iid: str, token: str, item: dict[str, str]) -> bool:
    """Reserve the item's estimated cost; past the batch's cap, hold the batch."""
    estimate = float(item.get("estimate") or 0.0)
    if rt.store.reserve_cost(bid, iid, estimate):
        return True
    record = rt.store.batch(bid) or {}
    reason = (f"budget reached: ${float(record.get('reserved_cost') or 0):.2f} of "
              f"${float(record.get('max_cost') or 0):.2f} reserved; the rest stays pending")
    rt.store.set_batch(bid, state=keys.BATCH_PAUSED, pause_reason=reason)
    ok, _ = rt.store.transition(bid, iid, expect=(keys.CLAIMED,), to=keys.PENDING,
                                guard=("token", token), due=REMOVE, inflight=REMOVE)
    if ok:
        rt.store.requeue(bid, iid)
    return False


def _estimate(rt: Runtime, bid: str, iid: str) -> float:
    return float((rt.store.item(bid, iid) or {}).get("estimate") or 0.0)


def _held_back(rt: Runtime, bid: str, iid: str, token: str, batch_state: str) -> bool:
    """A cancelled or paused batch takes its claimed items back."""
    guard = ("token", token)
    if batch_state == keys.BATCH_CANCELLED:
        rt.finish(bid, iid, expect=(keys.CLAIMED,), to=keys.CANCELLED, guard=guard)
        return True
    if batch_state in (keys.BATCH_PAUSED, keys.BATCH_SCHEDULED):
        ok, _ = rt.store.transition(bid, iid, expect=(keys.CLAIMED,), to=keys.PENDING,
                                    guard=guard, due=REMOVE, inflight=REMOVE)
        if ok:
            rt.store.requeue(bid, iid)
        return True
    return False


def _defer(rt: Runtime, bid: str, iid: str, token: str, wait: float) -> None:
    due = rt.clock() + wait + rt.limits.claim_due
    rt.store.transition(bid, iid, expect=(keys.CLAIMED,), guard=("token", token), due=due,
                        values={"deliveries": 0})
    rt.publisher.submit(bid, iid, token, countdown=wait)


def _send(rt: Runtime, bid: str, iid: str, token: str, item: dict[str, str]) -> None:
    attempt = uuid.uuid4().hex
    now = rt.clock()
    ok, _ = rt.store.transition(
        bid, iid, expect=(keys.CLAIMED,), guard=("token", token), to=keys.SUBMITTING,
        due=now + rt.limits.submit_due,
        values={"attempt_id": attempt, "+attempts": 1, "submitting_at": now})
    if not ok:
        return
    log = rt.item_log(bid, iid)
    try:
        answer = rt.run(rt.client.submit(item["model"], json.loads(item["input"])))
    except SubmitUncertain as exc:
        _uncertain(rt, bid, iid, exc.message, attempt)
    except RetryLater as exc:
        _retry_submit(rt, bid, iid, attempt, exc)
    except AccountError as exc:
        rt.store.refund_cost(bid, iid, _estimate(rt, bid, iid))
        pause_batch(rt, bid, exc)
        ok, _ = rt.store.transition(bid, iid, expect=(keys.SUBMITTING,), to=keys.PENDING,
                                    guard=("attempt_id", attempt), due=REMOVE, inflight=REMOVE)
        if ok:
            rt.store.requeue(bid, iid)
    except RcbatchError as exc:
        rt.store.refund_cost(bid, iid, _estimate(rt, bid, iid))  # refused: no job, no cost
        rt.finish(bid, iid, expect=(keys.SUBMITTING,), to=keys.FAILED,
                  guard=("attempt_id", attempt), error=exc.as_record())
    else:
        _accepted(rt, bid, iid, attempt, answer.request_id, item["model"])
        log.info("item_submitted", request_id=answer.request_id, state=keys.SUBMITTED)


def _accepted(rt: Runtime, bid: str, iid: str, attempt: str, request_id: str,
              model: str) -> None:
    now = rt.clock()
    assert rt.pacer is not None
    delay = rt.pacer.first_delay(model)
    hop = min(delay, MAX_POLL_DELAY)  # a longer delay is slept in hops (worker/polling.py)
    ok, _ = rt.store.transition(
        bid, iid, expect=(keys.SUBMITTING,), guard=("attempt_id", attempt), to=keys.SUBMITTED,
        due=now + hop + rt.limits.step_grace, inflight=now + rt.limits.slot_lease,
        values={"request_id": request_id, "submitted_at": now, "seq": 1, "deliveries": 0,
                "polls": 0, "step_errors": 0, "poll_at": now + delay})
    if ok:
        rt.publisher.poll(bid, iid, 1, countdown=hop)


def _retry_submit(rt: Runtime, bid: str, iid: str, attempt: str, exc: RetryLater) -> None:
    item = rt.store.item(bid, iid) or {}
    errors = int(item.get("step_errors", 0)) + 1
    if isinstance(exc, RateLimited):
        rt.store.cool_down(exc.retry_after or 5.0)
    if errors > rt.limits.max_step_errors:
        rt.store.refund_cost(bid, iid, _estimate(rt, bid, iid))
        rt.finish(bid, iid, expect=(keys.SUBMITTING,), to=keys.FAILED,
                  guard=("attempt_id", attempt), error=exc.as_record())
        return
    delay = backoff(errors, retry_after=exc.retry_after)
    token = item.get("token", "")
    ok, _ = rt.store.transition(
        bid, iid, expect=(keys.SUBMITTING,), guard=("attempt_id", attempt), to=keys.CLAIMED,
        due=rt.clock() + delay + rt.limits.claim_due,
        values={"step_errors": errors, "last_error": exc.as_record(),
                "deliveries": 0})
    if ok:
        rt.item_log(bid, iid).warning("submit_retry", kind=exc.kind, delay=round(delay, 2))
        rt.publisher.submit(bid, iid, token, countdown=delay)


def _uncertain(rt: Runtime, bid: str, iid: str, message: str, attempt: str | None = None) -> None:
    rt.finish(bid, iid, expect=(keys.SUBMITTING,), to=keys.SUBMIT_UNCERTAIN,
              guard=("attempt_id", attempt) if attempt else None,
              error={"kind": "submit_uncertain", "message": message})


def pause_batch(rt: Runtime, bid: str, exc: AccountError) -> None:
    """Hold a batch's submissions after the API refused the token or the account."""
    rt.store.set_batch(bid, state=keys.BATCH_PAUSED, pause_reason=exc.message or exc.kind)
    rt.log.bind(batch_id=bid).error("batch_paused", kind=exc.kind, reason=exc.message)
