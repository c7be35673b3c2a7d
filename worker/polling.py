"""Looking at a remote job once, then scheduling the next look: a poll never waits.

Each poll carries the item's step sequence; `begin_step` lets only the copy whose sequence
matches run, so a poll delivered twice (the Redis broker re-delivers countdowns that outlive
its visibility timeout) or re-driven by the reconciler exits without rescheduling anything.
"""

from __future__ import annotations

import json

from rcbatch.errors import (
    AccountError,
    ItemFailed,
    RcbatchError,
    RetryLater,
    UnexpectedAnswer,
)
from runcomfy.answers import JobState, ResultAnswer
from worker import keys
from worker.pacing import backoff
from worker.runtime import Runtime
from worker.state import REMOVE

_REMOTE = (keys.SUBMITTED, keys.RUNNING)


def poll(rt: Runtime, bid: str, iid: str, seq: int) -> None:
    """Poll one item's remote job if `seq` is still its current step."""
    guard = ("seq", str(seq))
    ok, state, deliveries = rt.store.begin_step(bid, iid, expect=_REMOTE, guard=guard)
    if not ok:
        return
    if deliveries > rt.limits.max_deliveries:
        rt.finish(bid, iid, expect=_REMOTE, to=keys.FAILED, guard=guard, error={
            "kind": "worker_lost", "message": f"polling crashed a worker {deliveries - 1} times"})
        return
    item = rt.store.item(bid, iid) or {}
    if state == keys.SUBMITTED and _cancelled_remotely(rt, bid, iid, item, seq):
        return
    try:
        answer = rt.run(rt.client.result(item["request_id"], include_cost=True))
    except RetryLater as exc:
        _after_error(rt, bid, iid, item, seq, exc, exc.retry_after)
    except AccountError as exc:
        # Already paid for: keep polling, slowly, until the token works again.
        rt.store.set_batch(bid, state=keys.BATCH_PAUSED, pause_reason=exc.message)
        _schedule(rt, bid, iid, seq, 30.0, {"last_error": exc.as_record()})
    except UnexpectedAnswer as exc:
        _after_error(rt, bid, iid, item, seq, exc, None)
    except (ItemFailed, RcbatchError) as exc:
        rt.finish(bid, iid, expect=_REMOTE, to=keys.FAILED, guard=guard, error=exc.as_record())
    else:
        _on_answer(rt, bid, iid, item, seq, answer)


def _cancelled_remotely(rt: Runtime, bid: str, iid: str, item: dict[str, str],
                        seq: int) -> bool:
    """In a cancelled batch, ask the API to cancel a still-queued job (a running one is paid
    for: it is left to finish and its outputs are stored)."""
    if (rt.store.batch(bid) or {}).get("state") != keys.BATCH_CANCELLED:
        return False
    try:
        answer = rt.run(rt.client.cancel(item["request_id"]))
    except RcbatchError as exc:
        rt.item_log(bid, iid, item).warning("cancel_failed", kind=exc.kind)
        return False
    if answer.outcome != "cancelled":
        return False
    return rt.finish(bid, iid, expect=_REMOTE, to=keys.CANCELLED, guard=("seq", str(seq)),
                     error={"kind": "cancelled", "message": "the batch was cancelled"})


def _on_answer(rt: Runtime, bid: str, iid: str, item: dict[str, str], seq: int,
               answer: ResultAnswer) -> None:
    guard = ("seq", str(seq))
    # A failed job never gets here: the client raises JobFailed for it.
    if answer.state is JobState.SUCCEEDED:
        _succeeded(rt, bid, iid, item, seq, answer)
    elif answer.state is JobState.CANCELLED:
        rt.finish(bid, iid, expect=_REMOTE, to=keys.CANCELLED, guard=guard,
                  error={"kind": "cancelled", "message": "the job was cancelled at the API"})
    else:
        _still_waiting(rt, bid, iid, item, seq, answer.state is JobState.RUNNING)


def _still_waiting(rt: Runtime, bid: str, iid: str, item: dict[str, str], seq: int,
                   running: bool) -> None:
    now = rt.clock()
    values: dict[str, object] = {"+polls": 1, "step_errors": 0}
    started = float(item["started_at"]) if item.get("started_at") else None
    if running and started is None:
        started = now
        values["started_at"] = now
    assert rt.pacer is not None
    delay = rt.pacer.next_delay(item["model"], None if started is None else now - started,
                                int(item.get("polls", 0)) + 1)
    to = keys.RUNNING if running else keys.SUBMITTED
    if _schedule(rt, bid, iid, seq, delay, values, to=to) and to != item.get("state"):
        rt.item_log(bid, iid, item).info("item_" + to, state=to)


def _succeeded(rt: Runtime, bid: str, iid: str, item: dict[str, str], seq: int,
               answer: ResultAnswer) -> None:
    now = rt.clock()
    if not answer.outputs:
        rt.finish(bid, iid, expect=_REMOTE, to=keys.FAILED, guard=("seq", str(seq)),
                  error={"kind": "no_output", "message": "the job succeeded with no output"})
        return
    start = float(item.get("started_at") or item.get("submitted_at") or now)
    rt.store.record_duration(item["model"], max(0.0, now - start))
    record = rt.store.batch(bid) or {}
    if record.get("state") == keys.BATCH_CANCELLED and record.get("discard"):
        rt.finish(bid, iid, expect=_REMOTE, to=keys.CANCELLED, guard=("seq", str(seq)),
                  error={"kind": "cancelled", "message": "the batch was cancelled; outputs "
                                                         "discarded"})
        return
    urls = [{"url": o.url, "kind": o.kind} for o in answer.outputs]
    values: dict[str, object] = {"output_urls": json.dumps(urls), "seq": seq + 1,
                                 "deliveries": 0, "step_errors": 0, "+polls": 1,
                                 "remote_finished_at": now}
    if answer.cost is not None:
        values["cost"] = answer.cost
    ok, _ = rt.store.transition(bid, iid, expect=_REMOTE, to=keys.FETCHING,
                                guard=("seq", str(seq)), due=now + rt.limits.step_grace,
                                inflight=REMOVE, values=values)
    if ok:
        rt.item_log(bid, iid, item).info("item_fetching", state=keys.FETCHING,
                                         outputs=len(urls))
        rt.publisher.fetch(bid, iid, seq + 1)
        from worker.submission import dispatch  # late: avoids an import cycle

        dispatch(rt)


def _after_error(rt: Runtime, bid: str, iid: str, item: dict[str, str], seq: int,
                 exc: RcbatchError, retry_after: float | None) -> None:
    errors = int(item.get("step_errors", 0)) + 1
    if errors > rt.limits.max_step_errors * 4:
        rt.finish(bid, iid, expect=_REMOTE, to=keys.FAILED, guard=("seq", str(seq)),
                  error=exc.as_record())
        return
    delay = backoff(errors, retry_after=retry_after)
    rt.item_log(bid, iid, item).warning("poll_retry", kind=exc.kind, delay=round(delay, 2))
    _schedule(rt, bid, iid, seq, delay, {"step_errors": errors, "last_error": exc.as_record()})


def _schedule(rt: Runtime, bid: str, iid: str, seq: int, delay: float,
              values: dict[str, object], to: str = "") -> bool:
    now = rt.clock()
    ok, _ = rt.store.transition(
        bid, iid, expect=_REMOTE, to=to, guard=("seq", str(seq)),
        due=now + delay + rt.limits.step_grace, inflight=now + rt.limits.slot_lease,
        values={**values, "seq": seq + 1, "deliveries": 0})
    if ok:
        rt.publisher.poll(bid, iid, seq + 1, countdown=delay)
    return ok
