"""Planned polls and their rounds (worker/poll_timer.py), over fakeredis and the fake API.

The Celery side (a round task per armed tick, on real workers) runs in every end-to-end test;
here the timer and `run_round` are plain objects and functions, with the clock moved by hand.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from rcbatch.worker import keys, poll_timer
from rcbatch.worker.pacing import TRUSTED_HISTORY
from rcbatch.worker.poll_timer import ROUND_LIMIT, TICK, PollTimer, run_round
from rcbatch.worker.refs import StepRef
from tests.test_steps import MODEL, Clock, Harness

LEASE = 600.0


@pytest.fixture
def timer() -> PollTimer:
    return PollTimer(fakeredis.FakeRedis(), lease=LEASE, clock=Clock())


def now(timer: PollTimer) -> float:
    return timer.clock()


def test_the_polls_of_one_tick_send_one_round_at_its_end(timer: PollTimer) -> None:
    first = timer.add([("b", "i1", 3)], 0.51)
    assert first is not None
    tick, countdown = first
    assert tick * TICK >= now(timer) + 0.51 and 0.51 <= countdown < 0.51 + TICK
    assert timer.add([("b", "i2", 5)], 0.52) is None  # same tick: nothing more to send
    later = timer.add([("b", "i3", 1)], 2.0)
    assert later is not None and later[0] > tick


def test_a_round_takes_what_is_due_by_its_tick_earliest_first_up_to_its_limit(
        timer: PollTimer) -> None:
    armed = timer.add([("b", "late", 1)], 5.0)
    for k in range(ROUND_LIMIT + 1):
        armed = timer.add([("b", f"i{k}", k + 1)], 0.3 - k * 0.01) or armed
    tick = poll_timer.math.ceil((now(timer) + 0.3) / TICK)
    taken = timer.take(tick)
    assert taken == [("b", f"i{k}", k + 1) for k in range(ROUND_LIMIT, 0, -1)]
    assert timer.take(tick) == [("b", "i0", 1)]  # the rest, for the round sent again
    assert timer.take(tick) == []  # "late" is not due by this tick


def test_polls_planned_together_arm_one_round_and_are_taken_in_the_order_given(
        timer: PollTimer) -> None:
    # the jobs a model's first duration wakes, oldest first (polling._record_duration):
    # names that sort the other way round, so the set's order of equal scores would not do
    polls = [("b", f"i{k:03d}", 200 - k) for k in range(150, 0, -1)]
    armed = timer.add(polls, 0.001)
    assert armed is not None and armed[1] <= 0.001 + TICK  # its round: at that tick's end
    assert timer.add(polls[:1], 0.001) is None  # its tick is armed already
    taken: list[tuple[str, str, int]] = []
    while batch := timer.take(armed[0]):
        taken += batch
    assert taken == polls
    assert timer.add([], 0.001) is None


def test_polls_taken_by_a_round_that_died_are_taken_again_after_the_lease(
        timer: PollTimer) -> None:
    armed = timer.add([("b", "ran", 1)], 0.1)
    timer.add([("b", "lost", 1)], 0.1)
    assert armed is not None
    timer.clock.now += 0.2  # type: ignore[attr-defined]
    taken = timer.take(armed[0])
    assert sorted(taken) == [("b", "lost", 1), ("b", "ran", 1)]
    timer.done([("b", "ran", 1)])  # then the worker is killed before "lost" ran
    assert timer.take(armed[0]) == []  # leased: not while the round may still be running
    timer.clock.now += LEASE  # type: ignore[attr-defined]
    assert timer.take(armed[0]) == [("b", "lost", 1)]  # the round's message came back


def test_a_poll_planned_after_its_ticks_round_ran_arms_it_again(timer: PollTimer) -> None:
    armed = timer.add([("b", "i1", 1)], 0.2)
    assert armed is not None
    timer.clock.now += 0.3  # type: ignore[attr-defined]
    assert timer.take(armed[0]) == [("b", "i1", 1)]
    again = timer.add([("b", "i2", 1)], 0.001)  # lands in a tick whose round just ran
    assert again is not None and timer.take(again[0]) == [("b", "i2", 1)]


def test_entries_left_by_re_driven_items_are_dropped(timer: PollTimer) -> None:
    timer.add([("b", "old", 1)], 1.0)
    timer.add([("b", "new", 1)], 500.0)
    assert timer.drop_stale(now(timer) + 100) == 1
    assert [m.decode() for m in timer.redis.zrange(keys.POLLS, 0, -1)] == ["1 b/new"]


# --- run_round, with the pipeline's steps ----------------------------------------------------


def planned(h: Harness, n: int, finished: bool = True) -> tuple[PollTimer, int, list[str]]:
    """`n` items submitted and their first polls planned in the timer; every job finished at
    the API (unless not `finished`) and the clock past the polls' tick. Returns the timer,
    the tick and the items."""
    h.api.auto_advance = False
    iids = h.register(n)
    timer = PollTimer(h.store.redis, lease=LEASE, clock=h.clock)
    ticks = set()
    while h.publisher.sent:
        kind, args, countdown = h.publisher.sent.pop(0)
        if kind == "submit":
            h.publisher.sent.insert(0, (kind, args, 0))
            h.step()
        elif kind == "poll":
            armed = timer.add([args], max(countdown, 0.01))
            ticks.add(armed[0] if armed else None)
    for rid in list(h.api.jobs) if finished else ():
        h.api.finish(rid)
    h.clock.now += 60
    return timer, max(t for t in ticks if t is not None), iids


def timed(h: Harness) -> None:
    """The model's durations known (no first duration to wake the other polls)."""
    for _ in range(TRUSTED_HISTORY):
        h.store.record_duration(MODEL, 1.0)


def test_a_round_of_jobs_still_running_sends_itself_again_when_full() -> None:
    h = Harness()
    timer, tick, iids = planned(h, ROUND_LIMIT + 2, finished=False)
    sent_again = []
    assert run_round(h.rt, timer, tick, again=lambda: sent_again.append(tick)) == ROUND_LIMIT
    assert sent_again == [tick]
    assert run_round(h.rt, timer, tick, again=lambda: sent_again.append(tick)) == 2
    assert sent_again == [tick]
    assert not h.api.calls("download")
    assert {h.state(i) for i in iids} <= {keys.SUBMITTED, keys.RUNNING}


def test_a_round_that_finds_jobs_done_polls_the_backlog_and_refills_before_downloading() -> None:
    # a wave of jobs that ended together: every poll refills a slot, so they all come first
    h = Harness()
    timed(h)
    timer, tick, iids = planned(h, 13)  # 8 in flight (the harness's cap), 5 waiting
    before = len(h.api.requests)
    assert run_round(h.rt, timer, tick, again=lambda: None) == 2 * ROUND_LIMIT
    calls = [endpoint for endpoint, _ in h.api.requests[before:]]
    first_download = calls.index("download")
    assert calls[:first_download].count("result") == 2 * ROUND_LIMIT
    assert calls[:first_download].count("submit") == 5  # every freed slot refilled first
    assert calls[first_download:].count("download") == 2 * ROUND_LIMIT
    assert [h.state(i) for i in iids[:8]] == [keys.COMPLETED] * 8


def test_a_round_stops_taking_more_polls_after_its_time_for_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    timed(h)
    timer, tick, iids = planned(h, 2 * ROUND_LIMIT)
    real_poll = poll_timer.poll

    def slow_poll(rt: Any, ref: StepRef) -> None:
        real_poll(rt, ref)
        h.clock.now += poll_timer.POLLS_FIRST_SECONDS / ROUND_LIMIT + 0.001

    monkeypatch.setattr(poll_timer, "poll", slow_poll)
    assert run_round(h.rt, timer, tick, again=lambda: None) == ROUND_LIMIT
    assert run_round(h.rt, timer, tick, again=lambda: None) == ROUND_LIMIT
    assert [h.state(i) for i in iids] == [keys.COMPLETED] * len(iids)


def test_one_item_failing_in_a_round_leaves_the_others_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    timer, tick, iids = planned(h, 3)
    real_poll = poll_timer.poll

    def poll(rt: Any, ref: StepRef) -> None:
        if ref.iid == iids[1]:
            raise ConnectionError("Redis went away")
        real_poll(rt, ref)

    monkeypatch.setattr(poll_timer, "poll", poll)
    assert run_round(h.rt, timer, tick, again=lambda: None) == 3
    assert [h.state(i) for i in iids] == [keys.COMPLETED, keys.SUBMITTED, keys.COMPLETED]
    assert h.store.redis.zscore(keys.POLLS, f"1 b/{iids[1]}") > h.clock.now  # leased: again
    assert h.store.redis.zscore(keys.POLLS, f"1 b/{iids[0]}") is None  # ran: gone


def test_fetches_after_a_slow_first_one_go_to_fetch_tasks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    timer, tick, iids = planned(h, 3)
    real_put = h.bucket.put_stream

    async def slow_put(*args: Any, **kwargs: Any) -> Any:
        h.clock.now += poll_timer.FETCH_INLINE_SECONDS + 1  # the first download takes long
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(h.bucket, "put_stream", slow_put)
    run_round(h.rt, timer, tick, again=lambda: None)
    done = [i for i in iids if h.state(i) == keys.COMPLETED]
    handed = [args[1] for kind, args, _ in h.publisher.sent if kind == "fetch"]
    assert len(done) == 1 and sorted(handed) == sorted(set(iids) - set(done))
    assert {h.store.item("b", i)["deliveries"] for i in handed} == {"0"}  # type: ignore
    h.drive()  # the fetch tasks run
    assert [h.state(i) for i in iids] == [keys.COMPLETED] * 3
