"""Re-driving every item whose next step is overdue, from the state in Redis.

Celery on Redis can drop a nudge (a failed publish inside `retry()`, a worker killed between
a state change and its publish). Every transition that expects a follow-up step records a
deadline in `rcb:due`; this sweep (run by beat every few seconds, and by `rcbatch run`) finds
the deadlines that passed and sends the step again under a new sequence number, so a late
original copy exits as stale.
"""

from __future__ import annotations

from rcbatch.worker import keys
from rcbatch.worker.runtime import Runtime
from rcbatch.worker.submission import dispatch


def reconcile(rt: Runtime, limit: int = 500) -> int:
    """Re-drive overdue items, refill free slots, and finish ended batches; items re-driven."""
    redriven = 0
    for bid, iid in rt.store.overdue(rt.clock(), limit):
        redriven += _redrive(rt, bid, iid)
    start_due_batches(rt)
    dispatch(rt)
    for bid in rt.store.active_batches():
        if rt.store.is_finished(bid):
            rt.publisher.manifest(bid)
    return redriven


def _redrive(rt: Runtime, bid: str, iid: str) -> int:
    item = rt.store.item(bid, iid)
    if item is None:
        rt.store.redis.zrem(keys.DUE, keys.member(bid, iid))
        return 0
    state = item["state"]
    log = rt.item_log(bid, iid, item).bind(state=state)
    if state == keys.CLAIMED:
        rt.store.transition(bid, iid, expect=(keys.CLAIMED,), guard=("token", item["token"]),
                            due=rt.clock() + rt.limits.claim_due)
        rt.publisher.submit(bid, iid, item["token"])
    elif state == keys.SUBMITTING:
        rt.finish(bid, iid, expect=(keys.SUBMITTING,), to=keys.SUBMIT_UNCERTAIN,
                  guard=("attempt_id", item["attempt_id"]) if item.get("attempt_id") else None,
                  error={"kind": "submit_uncertain",
                         "message": "the submission's outcome was never recorded"})
    elif state in (keys.SUBMITTED, keys.RUNNING, keys.FETCHING):
        if not _next_step(rt, bid, iid, item):
            return 0  # another sweep got there first
    else:
        rt.store.redis.zrem(keys.DUE, keys.member(bid, iid))
        return 0
    log.warning("item_redriven")
    return 1


def _next_step(rt: Runtime, bid: str, iid: str, item: dict[str, str]) -> bool:
    seq = int(item.get("seq", 0))
    state = item["state"]
    ok, _ = rt.store.transition(bid, iid, expect=(state,), guard=("seq", str(seq)),
                                due=rt.clock() + rt.limits.step_grace,
                                values={"seq": seq + 1, "+redrives": 1})
    if not ok:
        return False
    if state == keys.FETCHING:
        rt.publisher.fetch(bid, iid, seq + 1)
    else:
        rt.publisher.poll(bid, iid, seq + 1)
    return True


def start_due_batches(rt: Runtime) -> list[str]:
    """Start scheduled batches whose time has come; returns their ids."""
    started = []
    for bid in rt.store.active_batches():
        record = rt.store.batch(bid) or {}
        start_at = float(record.get("start_at") or 0)
        if record.get("state") == keys.BATCH_SCHEDULED and start_at <= rt.clock():
            rt.store.set_batch(bid, state=keys.BATCH_RUNNING, started_at=str(rt.clock()))
            rt.log.bind(batch_id=bid).info("batch_started", scheduled_for=start_at)
            started.append(bid)
    return started


def redrive_batch(rt: Runtime, bid: str) -> int:
    """Re-drive every unfinished step of a batch now (after a restart), not after its grace."""
    now = rt.clock()
    members = [keys.member(bid, r["id"]) for r in rt.store.iter_items(bid)
               if r.get("state") in (keys.CLAIMED, keys.SUBMITTING, *keys.IN_FLIGHT)]
    if members:
        rt.store.redis.zadd(keys.DUE, dict.fromkeys(members, now), xx=True)
    return reconcile(rt) if members else 0
