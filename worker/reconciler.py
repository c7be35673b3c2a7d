"""Re-driving every item whose next step is overdue, from the state in Redis.

Celery on Redis can drop a nudge (a failed publish inside `retry()`, a worker killed between
a state change and its publish). Every transition that expects a follow-up step records a
deadline in `rcb:due`; this sweep (run by beat every few seconds, and by `rcbatch run`) finds
the deadlines that passed and sends the step again under a new sequence number, so a late
original copy exits as stale.
"""

from __future__ import annotations

import asyncio

from rcbatch.errors import RcbatchError
from rcbatch.worker import keys, retention
from rcbatch.worker.refs import StepRef
from rcbatch.worker.runtime import Runtime, outage_service
from rcbatch.worker.submission import dispatch

#: seconds between two probes of a service an outage pauses a batch for
PROBE_EVERY = 15.0
#: seconds between two probes of a service failing for a batch not paused yet (confirms it)
PROBE_STREAK_EVERY = 5.0
#: the longest a probe may take (a black-holed host must not hold the sweep)
PROBE_TIMEOUT = 10.0
#: a request id no job has: the API answers 404 for it, which proves it is up (free to ask)
PROBE_REQUEST_ID = "rcbatch-probe"
#: takes the batch's next probe when it is due (the record's `probe_at`), for one process
_TAKE_PROBE = """
if tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0') > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'probe_at', ARGV[2])
return 1
"""


def reconcile(rt: Runtime, limit: int = 500) -> int:
    """Re-drive overdue items, refill free slots, and finish ended batches; items re-driven."""
    redriven = 0
    for bid, iid in rt.store.overdue(rt.clock(), limit):
        redriven += _redrive(rt, StepRef(bid, iid))
    start_due_batches(rt)
    probe_outages(rt)
    dispatch(rt)
    retention.sweep(rt.store)  # batches finished before retention existed; hourly
    for bid in rt.store.active_batches():
        if rt.store.is_finished(bid):
            rt.publisher.manifest(bid)
    return redriven


def probe_outages(rt: Runtime) -> int:
    """Ask the service an outage holds each batch for whether it answers again (one cheap
    call per batch every PROBE_EVERY s, by whichever process gets there first), so a pause
    lifts even when nothing of the batch is in flight; a batch whose calls have been failing
    without a pause yet is probed too, which pauses it in time. Returns how many probed."""
    probed = 0
    for bid in rt.store.active_batches():
        record = rt.store.batch(bid) or {}
        service, every = _probe_target(record)
        now = rt.clock()
        if service is None or not rt.store.redis.eval(_TAKE_PROBE, 1, keys.batch(bid),
                                                      repr(now), repr(now + every)):
            continue
        _probe(rt, bid, service, record)
        probed += 1
    return probed


def _probe_target(record: dict[str, str]) -> tuple[str | None, float]:
    """The service to probe for a batch record, and how often; (None, 0) for none."""
    state = record.get("state")
    if state == keys.BATCH_PAUSED and record.get("pause_kind") == keys.PAUSE_OUTAGE:
        return record.get("outage_service") or "api", PROBE_EVERY
    if state != keys.BATCH_RUNNING:
        return None, 0.0
    for service in ("api", "bucket"):
        since = record.get(f"{service}_down_since")
        if since and float(record.get(f"{service}_ok_at") or 0) < float(since):
            return service, PROBE_STREAK_EVERY
    return None, 0.0


def _probe(rt: Runtime, bid: str, service: str, record: dict[str, str]) -> None:
    """One cheap call to `service`; any answer that is not an outage counts as its return."""
    try:
        if service == "bucket":
            rt.buckets(record.get("bucket_url", "")).exists(f"{bid}/manifest.jsonl")
        else:
            rt.run(asyncio.wait_for(rt.client.status(PROBE_REQUEST_ID), PROBE_TIMEOUT))
    except TimeoutError:
        rt.service_down(bid, service, RcbatchError("no answer in time", kind="deadline"))
        return
    except RcbatchError as exc:
        if outage_service(exc) == service:
            rt.service_down(bid, service, exc)
            return
    rt.service_ok(bid, service, record.get("state", ""))
    rt.log.bind(batch_id=bid).debug("outage_probe", service=service)


def _redrive(rt: Runtime, ref: StepRef) -> int:
    """Send an overdue item's step again (`ref`: the item, no guard yet); 1 when it did."""
    item = rt.store.item(ref.bid, ref.iid)
    if item is None:
        rt.store.redis.zrem(keys.DUE, keys.member(ref.bid, ref.iid))
        return 0
    state, ref = item["state"], ref.knowing(item)
    log = rt.item_log(ref).bind(state=state)
    if state == keys.CLAIMED:
        claimed = ref.guarded("token", item["token"])
        rt.store.transition(claimed, expect=(keys.CLAIMED,), due=rt.clock() + rt.limits.claim_due)
        rt.publisher.submit(ref.bid, ref.iid, claimed.token)
    elif state == keys.SUBMITTING:
        attempt = item.get("attempt_id")
        rt.finish(ref.guarded("attempt_id", attempt) if attempt else ref,
                  expect=(keys.SUBMITTING,), to=keys.SUBMIT_UNCERTAIN,
                  error={"kind": "submit_uncertain",
                         "message": "the submission's outcome was never recorded"})
    elif state in (keys.SUBMITTED, keys.RUNNING, keys.FETCHING):
        if not _next_step(rt, StepRef.at_seq(ref.bid, ref.iid, int(item.get("seq", 0))), state):
            return 0  # another sweep got there first
    else:
        rt.store.redis.zrem(keys.DUE, keys.member(ref.bid, ref.iid))
        return 0
    log.warning("item_redriven")
    return 1


def _next_step(rt: Runtime, ref: StepRef, state: str) -> bool:
    """Move the item at step `ref` on to a new step of the same kind, and send it."""
    after = ref.next_seq()
    ok, _ = rt.store.transition(ref, expect=(state,), due=rt.clock() + rt.limits.step_grace,
                                values={"seq": after.seq, "+redrives": 1})
    if not ok:
        return False
    send = rt.publisher.fetch if state == keys.FETCHING else rt.publisher.poll
    send(after.bid, after.iid, after.seq)
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


def poll_remote_now(rt: Runtime, bid: str) -> int:
    """Poll every job of the batch still at the API now (a cancel: each queued job gets the
    API's cancel within seconds, not at its next planned poll); returns how many."""
    sent = 0
    for record in rt.store.iter_items(bid):
        state = record.get("state")
        if state in (keys.SUBMITTED, keys.RUNNING):
            ref = StepRef.at_seq(bid, record["id"], int(record.get("seq", 0)))
            sent += _next_step(rt, ref, state)
    return sent
