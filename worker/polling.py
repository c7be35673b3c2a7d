"""Looking at a remote job once, then scheduling the next look: a poll never waits.

Each poll carries the item's step sequence; `begin_step` lets only the copy whose sequence
matches run, so a poll delivered twice (the Redis broker re-delivers countdowns that outlive
its visibility timeout) or re-driven by the reconciler exits without rescheduling anything.

A job's poll that cannot reach the API (an outage, worker/runtime.py's `outage_service`) is
tried again with a capped backoff for as long as the outage lasts, never failing the job: it
is paid for, and the first answer after the outage lifts the batch's pause.
"""

from __future__ import annotations

import json
from datetime import datetime

from rcbatch.errors import (
    AccountError,
    ItemFailed,
    RcbatchError,
    RetryLater,
    UnexpectedAnswer,
)
from rcbatch.runcomfy.answers import JobState, ResultAnswer
from rcbatch.worker import keys
from rcbatch.worker.fetching import store_outputs
from rcbatch.worker.pacing import HOP_SLACK, MAX_POLL_DELAY, MIN_POLL_DELAY, SCOUTS, backoff
from rcbatch.worker.refs import FreedSlot, PendingFetch, StepRef
from rcbatch.worker.runtime import Runtime, outage_service
from rcbatch.worker.state import REMOVE, Step
from rcbatch.worker.submission import dispatch

_REMOTE = (keys.SUBMITTED, keys.RUNNING)
#: seconds the submission time of a model's oldest untimed job is kept after the last wake-up
#: of an old job (old jobs wake far more often; a stale one would keep the others young)
SCOUT_MEMORY = 600
#: the jobs woken by a model's first duration are asked this soon: through the poll timer,
#: in rounds of a few polls each, whose fetches wait until the round's polls ran (a wave of
#: jobs that ended together gets its slots refilled before the downloads), rather than in a
#: message each (worker/poll_timer.py)
WAKE_SOON = 0.001


def poll(rt: Runtime, ref: StepRef) -> None:
    """Poll one item's remote job if the ref's step is still its current one
    (`StepRef.at_seq`)."""
    step = rt.store.begin_step(ref, expect=_REMOTE)
    if not step.ok:
        return
    ref = ref.knowing(step.item)
    if step.deliveries > rt.limits.max_deliveries:
        rt.finish(ref, expect=_REMOTE, to=keys.FAILED, error={
            "kind": "worker_lost",
            "message": f"polling crashed a worker {step.deliveries - 1} times"})
        return
    item, cancelled = step.item, step.batch.get("state") == keys.BATCH_CANCELLED
    if _hop(rt, ref, item, cancelled):
        return
    if step.state == keys.SUBMITTED and cancelled and _cancelled_remotely(rt, ref, item):
        return
    if _waits_for_scout(rt, ref, item):
        return
    try:
        answer = rt.run(rt.client.result(item["request_id"], include_cost=True))
    except RetryLater as exc:
        _after_error(rt, ref, item, exc, exc.retry_after)
    except AccountError as exc:
        # Already paid for: keep polling, slowly, until the token works again.
        rt.store.set_batch(ref.bid, state=keys.BATCH_PAUSED, pause_kind=keys.PAUSE_ACCOUNT,
                           pause_reason=exc.message)
        _schedule(rt, ref, 30.0, {"last_error": exc.as_record()})
    except UnexpectedAnswer as exc:
        _after_error(rt, ref, item, exc, None)
    except ItemFailed as exc:
        rt.service_ok(ref.bid, "api", step.batch.get("state", ""))  # it answered
        rt.finish(ref, expect=_REMOTE, to=keys.FAILED, error=exc.as_record())
    except RcbatchError as exc:
        rt.finish(ref, expect=_REMOTE, to=keys.FAILED, error=exc.as_record())
    else:
        rt.service_ok(ref.bid, "api", step.batch.get("state", ""))
        _on_answer(rt, ref, step, answer)


def _hop(rt: Runtime, ref: StepRef, item: dict[str, str], cancelled: bool) -> bool:
    """A poll planned further ahead than one countdown may reach, or a first poll planned on
    a short history (`Pacer.first_wake`), wakes up early: sleep the rest (one more hop)
    without asking the API, a job not asked yet aiming again with the history as it is now
    (`Pacer.re_aim`); True when it slept."""
    now = rt.clock()
    remaining = float(item.get("poll_at") or 0) - now
    if remaining <= HOP_SLACK or cancelled:
        return False
    if not int(item.get("polls") or 0):
        assert rt.pacer is not None
        elapsed = now - float(item.get("submitted_at") or now)
        remaining = rt.pacer.re_aim(item["model"], elapsed, remaining)
        if remaining <= HOP_SLACK:
            return False
    return _schedule(rt, ref, remaining, {})


def _waits_for_scout(rt: Runtime, ref: StepRef, item: dict[str, str]) -> bool:
    """Whether this wake-up sleeps again instead of asking the API (True when it does).

    Once the model is timed, a job is asked as soon as it may be done (`Pacer.resume_delay`:
    a job woken on the cold-start schedule sleeps until its first planned poll when it is
    too young to be done). Before that, an old job asks at its own probe times or when the
    model's guard is free, a young one only wakes up again (`Pacer.cold_wake`): the first
    job seen done times the model for all of them at the price of a few polls per job."""
    assert rt.pacer is not None
    now, model = rt.clock(), item["model"]
    submitted = float(item.get("submitted_at") or now)
    if rt.pacer.timed(model):
        delay = rt.pacer.resume_delay(model, now - submitted)
        return delay is not None and _schedule(rt, ref, delay, {"+wakeups": 1})
    plan = rt.pacer.cold_wake(
        now - submitted, now, young=_young(rt, model, now, submitted),
        probe_at=float(item["scout_at"]) if item.get("scout_at") else None,
        key=item.get("request_id") or ref.iid,
        take_guard=lambda window, own: _take_scout(rt, model, now, window, own))
    if plan.poll:
        return False
    values: dict[str, object] = {"+wakeups": 1}
    if not item.get("waits_timing"):  # once: the first duration of the model wakes it
        rt.store.wait_for_timing(model, ref.bid, ref.iid, submitted)
        values["waits_timing"] = 1
    if plan.probe_at is not None:
        values["scout_at"] = plan.probe_at
    return _schedule(rt, ref, plan.delay, values)


def _young(rt: Runtime, model: str, now: float, submitted: float) -> bool:
    """Whether a job is much younger than the model's oldest untimed job (`Pacer.young`):
    the first to end is almost surely among the oldest, so only those probe. The oldest's
    submission time lapses SCOUT_MEMORY s after the last old job woke (`_take_scout` keeps
    it), so jobs that died untimed (failed, cancelled) do not keep the others young."""
    assert rt.pacer is not None
    key = keys.scout(model, "oldest")
    with rt.store.redis.pipeline(transaction=False) as pipe:
        pipe.set(key, repr(submitted), nx=True, ex=SCOUT_MEMORY)
        pipe.get(key)
        oldest = float(pipe.execute()[1] or submitted)
    return rt.pacer.young(now - submitted, now - oldest)


def _take_scout(rt: Runtime, model: str, now: float, window: float, own: bool) -> bool:
    """Hold one of the model's SCOUTS guard keys until now + window (an old job's wake-up,
    which also keeps the model's oldest-job record alive): when one is free by the runtime's
    clock, or in any case for the job's own probe (`own`, Pacer.cold_wake). Two polls
    racing for one may both win: one extra poll, no harm."""
    names = [keys.scout(model, n) for n in range(SCOUTS)]
    with rt.store.redis.pipeline(transaction=False) as pipe:
        pipe.expire(keys.scout(model, "oldest"), SCOUT_MEMORY)
        pipe.mget(names)
        held_all = pipe.execute()[1]
    for name, held in zip(names, held_all, strict=True):
        if own or held is None or float(held) <= now:
            rt.store.redis.set(name, repr(now + window), px=int(window * 1000) + 60_000)
            return True
    return False


def _cancelled_remotely(rt: Runtime, ref: StepRef, item: dict[str, str]) -> bool:
    """In a cancelled batch, ask the API to cancel a still-queued job (a running one is paid
    for: it is left to finish and its outputs are stored)."""
    try:
        answer = rt.run(rt.client.cancel(item["request_id"]))
    except RcbatchError as exc:
        rt.item_log(ref).warning("cancel_failed", kind=exc.kind)
        return False
    if answer.outcome != "cancelled":
        return False
    return rt.finish(ref, expect=_REMOTE, to=keys.CANCELLED,
                     error={"kind": "cancelled", "message": "the batch was cancelled"})


def _on_answer(rt: Runtime, ref: StepRef, step: Step, answer: ResultAnswer) -> None:
    # A failed job never gets here: the client raises JobFailed for it.
    if answer.state is JobState.SUCCEEDED:
        _succeeded(rt, ref, step, answer)
    elif answer.state is JobState.CANCELLED:
        rt.finish(ref, expect=_REMOTE, to=keys.CANCELLED,
                  error={"kind": "cancelled", "message": "the job was cancelled at the API"})
    else:
        _still_waiting(rt, ref, step, answer.state is JobState.RUNNING)


def _still_waiting(rt: Runtime, ref: StepRef, step: Step, running: bool) -> None:
    """The job is not done: plan its next look (a job of a batch with nothing left to submit
    is in its tail, see `Pacer.next_delay`). A probe of a model not timed yet (no duration
    known) also sets the job's next own probe (Pacer.cold_wake); until then it only wakes
    up."""
    item = step.item
    now = rt.clock()
    values: dict[str, object] = {"+polls": 1, "step_errors": 0, "outage_errors": 0}
    if running and not item.get("started_at"):
        values["started_at"] = now
    assert rt.pacer is not None
    elapsed = max(0.0, now - float(item.get("submitted_at") or now))
    delay = rt.pacer.next_delay(item["model"], elapsed, int(item.get("polls", 0)) + 1,
                                tail=step.batch.get("pending") == "0")
    if item.get("slot_freed_at"):  # a refill: aim at its wave's end if that is still ahead
        aim, since = rt.pacer.refill_aim(item["model"]), now - float(item["slot_freed_at"])
        if aim is not None and since + MIN_POLL_DELAY < aim:
            delay = aim - since
    if not rt.pacer.timed(item["model"]):
        values["scout_at"] = rt.pacer.next_probe(now, elapsed)
    to = keys.RUNNING if running else keys.SUBMITTED
    if _schedule(rt, ref, delay, values, to=to) and to != item.get("state"):
        rt.item_log(ref).info("item_" + to, state=to)


def _succeeded(rt: Runtime, ref: StepRef, step: Step, answer: ResultAnswer) -> None:
    now, item = rt.clock(), step.item
    if not answer.outputs:
        rt.finish(ref, expect=_REMOTE, to=keys.FAILED,
                  error={"kind": "no_output", "message": "the job succeeded with no output"})
        return
    seconds = _job_time(answer, item, now)
    freed = FreedSlot(item["model"], float(item.get("submitted_at") or now) + seconds)
    _record_duration(rt, item, seconds, freed.ended_at)
    if _discards(step):
        rt.finish(ref, expect=_REMOTE, to=keys.CANCELLED,
                  error={"kind": "cancelled", "message": "the batch was cancelled; outputs "
                                                         "discarded"})
        return
    urls = [{"url": o.url, "kind": o.kind} for o in answer.outputs]
    # deliveries 1: the fetch started below (here, or after the other polls of a round) is
    # the fetch step's first start, what its begin_step would have counted, so a fetch that
    # keeps crashing fails in time; one handed to a fetch task instead is reset to 0.
    fetch = ref.next_seq()
    values: dict[str, object] = {"output_urls": json.dumps(urls), "seq": fetch.seq,
                                 "deliveries": 1, "step_errors": 0, "outage_errors": 0,
                                 "+polls": 1,
                                 "remote_finished_at": now}
    if answer.cost is not None:
        values["cost"] = answer.cost
    ok, _ = rt.store.transition(ref, expect=_REMOTE, to=keys.FETCHING,
                                due=now + rt.limits.step_grace, inflight=REMOVE, values=values)
    if ok:
        rt.item_log(ref).info("item_fetching", state=keys.FETCHING, outputs=len(urls))
        # the slot is free: fill it before the download, with one item (each job seen done
        # fills its own slot, so a refill's first poll follows the end of the job it replaced)
        dispatch(rt, limit=1, inline=1, freed=freed)
        # Stored right here rather than through a fetch nudge: one task and one hop less per
        # job (in a round, once its other polls ran). The item is `fetching` with its own
        # step and deadline, so if this process dies the reconciler re-drives the fetch
        # exactly as it would a lost nudge. The record is the one this poll read plus what
        # the transition wrote: no second read.
        written = {k: str(v) for k, v in values.items() if not k.startswith("+")}
        pending = PendingFetch(fetch, {**item, **written}, step.batch)
        if rt.fetch_later is None:
            store_outputs(rt, pending)
        else:
            rt.fetch_later.append(pending)


def _discards(step: Step) -> bool:
    """Whether the item's batch was cancelled with its outputs discarded."""
    return step.batch.get("state") == keys.BATCH_CANCELLED and bool(step.batch.get("discard"))


def _record_duration(rt: Runtime, item: dict[str, str], seconds: float,
                     ended_at: float) -> None:
    """Remember a job's duration; the first one of a model wakes every job of it that waits
    in the cold start, oldest first, so that those which ended meanwhile are asked now rather
    than at their next wake-up (the oldest are the likeliest to have ended: woken first, they
    are asked first, ahead of the burst of young ones). Only a sleeping job is woken, and its
    step moves on (its pending wake-up becomes a stale copy that exits): no two live copies of
    one step can both ask the API, and a step that is running is left alone.

    A refill (an item submitted into the slot of a job seen done) also records its refill
    time: from that job's end (`slot_freed_at`) to its own (`Pacer.refill_aim`)."""
    assert rt.pacer is not None
    model, freed_at = item["model"], item.get("slot_freed_at")
    first = not rt.pacer.timed(model)
    rt.store.record_duration(model, seconds,
                             None if not freed_at else ended_at - float(freed_at))
    if first:  # three round trips and one round message, however many wait (150 at C=100)
        woken = rt.store.wake_polls(rt.store.take_waiting_for_timing(model),
                                    due=rt.clock() + rt.limits.step_grace)
        rt.publisher.polls(woken, countdown=WAKE_SOON)


def _job_time(answer: ResultAnswer, item: dict[str, str], now: float) -> float:
    """Submission to end of the job: from the API's own timestamps when it gives them (our
    poll's lateness must not teach the pacer that jobs are slower than they are)."""
    try:
        created = datetime.fromisoformat(answer.created_at or "")
        finished = datetime.fromisoformat(answer.finished_at or "")
    except ValueError:
        return max(0.0, now - float(item.get("submitted_at") or now))
    return max(0.0, (finished - created).total_seconds())


def _after_error(rt: Runtime, ref: StepRef, item: dict[str, str], exc: RcbatchError,
                 retry_after: float | None) -> None:
    service = outage_service(exc)
    if service is not None:
        rt.service_down(ref.bid, service, exc)
        outages = int(item.get("outage_errors", 0)) + 1
        delay = backoff(outages, retry_after=retry_after)  # capped at MAX_POLL_DELAY
        rt.item_log(ref).warning("poll_retry", kind=exc.kind, delay=round(delay, 2))
        _schedule(rt, ref, delay, {"outage_errors": outages, "last_error": exc.as_record()})
        return
    errors = int(item.get("step_errors", 0)) + 1
    if errors > rt.limits.max_step_errors * 4:
        rt.finish(ref, expect=_REMOTE, to=keys.FAILED, error=exc.as_record())
        return
    delay = backoff(errors, retry_after=retry_after)
    rt.item_log(ref).warning("poll_retry", kind=exc.kind, delay=round(delay, 2))
    _schedule(rt, ref, delay, {"step_errors": errors, "last_error": exc.as_record()})


def _schedule(rt: Runtime, ref: StepRef, delay: float, values: dict[str, object],
              to: str = "") -> bool:
    """Plan the item's next poll in `delay` s (slept in hops of at most MAX_POLL_DELAY)."""
    now, after = rt.clock(), ref.next_seq()
    hop = min(delay, MAX_POLL_DELAY)
    ok, _ = rt.store.transition(
        ref, expect=_REMOTE, to=to,
        due=now + hop + rt.limits.step_grace, inflight=now + rt.limits.slot_lease,
        values={**values, "seq": after.seq, "deliveries": 0, "poll_at": now + delay})
    if ok:
        rt.publisher.poll(after.bid, after.iid, after.seq, countdown=hop)
    return ok
