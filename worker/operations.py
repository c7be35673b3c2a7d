"""Operator actions on a batch: cancel it for good, and retry its failed items.

Both change only the state in Redis: workers see a cancelled batch at their next step (a
claimed item is cancelled instead of submitted, a queued remote job gets the API's cancel),
and retried items simply become pending again and wait for a slot like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from rcbatch.worker import keys, retention
from rcbatch.worker.state import REMOVE, Store

#: error kinds that are the input's fault: retrying them would fail (and cost) again
INPUT_FAULTS = ("api_rejected", "validation", "input", "insecure_url")


def cancel_batch(store: Store, bid: str, *, discard: bool = False) -> int:
    """Mark the batch cancelled (sticky) and cancel its pending items; returns how many.

    Jobs already running at the API are paid for: their outputs are still stored, unless
    `discard`.
    """
    store.set_batch(bid, state=keys.BATCH_CANCELLED, cancelled_at=str(store.clock()),
                    discard="1" if discard else "")
    cancelled = 0
    for record in store.iter_items(bid):
        ok, _ = store.transition(bid, record["id"], expect=(keys.PENDING,), to=keys.CANCELLED,
                                 due=REMOVE, inflight=REMOVE,
                                 values={"finished_at": store.clock(), "error": json.dumps(
                                     {"kind": "cancelled", "message": "the batch was cancelled"})})
        cancelled += ok
    store.redis.delete(keys.pending(bid))
    return cancelled


def retryable(record: dict[str, str], *, all_failed: bool, uncertain: bool) -> bool:
    """Whether `rcbatch retry` should re-run this item."""
    state = record.get("state")
    if state == keys.SUBMIT_UNCERTAIN:
        return uncertain
    if state != keys.FAILED:
        return False
    kind = json.loads(record.get("error") or "{}").get("kind", "")
    return all_failed or kind not in INPUT_FAULTS


def retry_items(store: Store, bid: str, records: Iterable[dict[str, str]]) -> int:
    """Make these failed items pending again, keeping their earlier errors in `history`; a
    batch that gets any back is active again, so its records no longer expire."""
    count = 0
    for record in records:
        history = json.loads(record.get("history") or "[]")
        history.append({"attempts": int(record.get("attempts") or 0),
                        "request_id": record.get("request_id") or None,
                        "error": json.loads(record.get("error") or "null"),
                        "finished_at": record.get("finished_at")})
        ok, _ = store.transition(
            bid, record["id"], expect=(record["state"],), to=keys.PENDING, due=REMOVE,
            values={"history": json.dumps(history), "error": "\0", "request_id": "\0",
                    "outputs": "\0", "output_urls": "\0", "finished_at": "\0",
                    "started_at": "\0", "step_errors": 0, "seq": 0})
        if ok:
            store.requeue(bid, record["id"], front=False)
            count += 1
    if count:
        store.set_batch(bid, state=keys.BATCH_RUNNING, finished_at="")
        store.redis.zadd(keys.ACTIVE, {bid: store.clock()})
        retention.revive(store, bid)
    return count


def pause_batch(store: Store, bid: str, reason: str = "paused by the user") -> None:
    """Hold the batch's submissions; jobs already at the API are still polled and stored."""
    store.set_batch(bid, state=keys.BATCH_PAUSED, pause_kind="user", pause_reason=reason)


def resume_batch(store: Store, bid: str) -> bool:
    """Release a paused batch; False when it was not paused."""
    if (store.batch(bid) or {}).get("state") != keys.BATCH_PAUSED:
        return False
    store.set_batch(bid, state=keys.BATCH_RUNNING, pause_kind="", pause_reason="")
    return True
