"""A model's jobs in submission order (worker/job_order.py): a job seen done wakes the
sleeping polls of the jobs submitted before it, each once (fakeredis with Lua)."""

from __future__ import annotations

import fakeredis
import pytest

from rcbatch.worker import keys
from rcbatch.worker.job_order import SubmitOrder
from rcbatch.worker.state import NewItem, Store

NOW = 1_000.0


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(), clock=lambda: NOW)


@pytest.fixture
def order(store: Store) -> SubmitOrder:
    return SubmitOrder(store.redis)


def submitted(store: Store, order: SubmitOrder, jobs: dict[str, float],
              poll_at: float = NOW + 5) -> None:
    """Register batch "b" with one item per job, each polling (seq 1) and noted in order."""
    store.register("b", {}, [NewItem(iid, "f.jsonl", n + 1, "m", {"prompt": iid})
                             for n, iid in enumerate(jobs)])
    for iid, at in jobs.items():
        store.transition("b", iid, expect=(keys.PENDING,), to=keys.SUBMITTED,
                         values={"seq": 1, "deliveries": 0, "poll_at": poll_at,
                                 "submitted_at": at})
        order.note("m", "b", iid, at)


def seen_done(order: SubmitOrder, iid: str, at: float, wake: bool = True,
              soon: float = NOW + 0.05) -> list[tuple[str, str, int]]:
    return order.seen_done("m", "b", iid, at, wake=wake, now=NOW, due=NOW + 60, soon=soon)


def test_a_job_seen_done_wakes_the_jobs_submitted_before_it_oldest_first(
        store: Store, order: SubmitOrder) -> None:
    submitted(store, order, {"late": 30.0, "first": 10.0, "second": 20.0, "after": 40.0})
    assert seen_done(order, "late", 30.0) == [("b", "first", 2), ("b", "second", 2)]
    first = store.item("b", "first") or {}
    assert (first["seq"], first["poll_at"]) == ("2", repr(NOW))
    assert store.item("b", "after")["seq"] == "1"  # type: ignore[index]  # submitted after
    # the woken steps are guarded like any poll: the planned one is now a stale copy
    assert not store.begin_step("b", "first", expect=(keys.SUBMITTED,), guard=("seq", "1")).ok
    assert sorted(store.overdue(NOW + 61)) == [("b", "first"), ("b", "second")]


def test_a_job_is_woken_this_way_once(store: Store, order: SubmitOrder) -> None:
    submitted(store, order, {"a": 1.0, "b1": 2.0, "c": 3.0})
    assert seen_done(order, "b1", 2.0) == [("b", "a", 2)]
    # its woken poll found it still running and planned the next one: not woken again
    store.transition("b", "a", expect=(keys.SUBMITTED,), values={"seq": 3, "poll_at": NOW + 9})
    assert seen_done(order, "c", 3.0) == []


def test_running_soon_moved_on_and_unordered_jobs_are_left_alone(
        store: Store, order: SubmitOrder) -> None:
    submitted(store, order, {"running": 1.0, "soon": 2.0, "moved": 3.0, "asleep": 4.0,
                             "seen": 5.0})
    store.begin_step("b", "running", expect=(keys.SUBMITTED,), guard=("seq", "1"))
    store.transition("b", "soon", expect=(keys.SUBMITTED,), values={"poll_at": NOW + 0.01})
    store.transition("b", "moved", expect=(keys.SUBMITTED,), to=keys.FETCHING)
    assert seen_done(order, "seen", 5.0) == [("b", "asleep", 2)]
    # the one that moved on is forgotten; the running one and the one due soon stay noted
    noted = [m.decode() for m in store.redis.zrange(keys.submit_order("m"), 0, -1)]
    assert noted == ["b/running", "b/soon"]


def test_without_wake_a_job_seen_done_is_only_forgotten(
        store: Store, order: SubmitOrder) -> None:
    submitted(store, order, {"a": 1.0, "b1": 2.0})
    assert seen_done(order, "b1", 2.0, wake=False) == []
    assert store.item("b", "a")["seq"] == "1"  # type: ignore[index]
    noted = [m.decode() for m in store.redis.zrange(keys.submit_order("m"), 0, -1)]
    assert noted == ["b/a"]
    assert store.redis.ttl(keys.submit_order("m")) > 0
