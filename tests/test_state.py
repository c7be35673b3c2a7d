"""State transitions in Redis (fakeredis with Lua): the rules every step relies on."""

from __future__ import annotations

import fakeredis
import pytest

from rcbatch.worker import keys
from rcbatch.worker.state import REMOVE, NewItem, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Store:
    return Store(fakeredis.FakeRedis(), clock=clock)


def items(n: int) -> list[NewItem]:
    return [NewItem(f"i{k}", "f.jsonl", k + 1, "m", {"prompt": f"p{k}"}) for k in range(n)]


def test_register_counts_every_item_pending(store: Store) -> None:
    reg = store.register("b", {"name": "n"}, items(5))
    assert (reg.added, reg.existing) == (5, 0)
    assert store.counts("b")["pending"] == 5
    assert store.item_ids("b") == [f"i{k}" for k in range(5)]
    assert store.batch_id_for_name("n") == "b"


def test_registering_again_adds_only_new_items(store: Store) -> None:
    store.register("b", {"name": "n"}, items(3))
    store.claim("b", cap=10, lease=60, claim_due=60)
    reg = store.register("b", {"name": "n"}, items(5))
    assert (reg.added, reg.existing) == (2, 3)
    assert store.item("b", "i0")["state"] == keys.CLAIMED  # type: ignore[index]
    assert store.counts("b")["pending"] == 5  # 3 claimed + 2 new all show as pending
    assert int(store.batch("b")["total"]) == 5  # type: ignore[index]


def test_claim_never_exceeds_the_shared_cap(store: Store) -> None:
    store.register("a", {}, items(10))
    store.register("b", {}, items(10))
    first = store.claim("a", cap=4, lease=60, claim_due=60)
    second = store.claim("b", cap=4, lease=60, claim_due=60)
    assert len(first) == 4 and second == []
    assert store.in_flight() == 4


def test_expired_leases_give_slots_back(store: Store, clock: Clock) -> None:
    store.register("a", {}, items(3))
    assert len(store.claim("a", cap=1, lease=10, claim_due=60)) == 1
    assert store.claim("a", cap=1, lease=10, claim_due=60) == []
    clock.now += 11
    assert len(store.claim("a", cap=1, lease=10, claim_due=60)) == 1


def test_claim_skips_items_that_are_no_longer_pending(store: Store) -> None:
    store.register("a", {}, items(2))
    store.transition("a", "i0", expect=(keys.PENDING,), to=keys.CANCELLED)
    claimed = store.claim("a", cap=5, lease=60, claim_due=60)
    assert [iid for iid, _ in claimed] == ["i1"]


def test_claim_waits_while_the_batch_is_not_running(store: Store) -> None:
    store.register("a", {}, items(2), start=False)
    assert store.claim("a", cap=5, lease=60, claim_due=60) == []
    store.set_batch("a", state=keys.BATCH_RUNNING)
    assert len(store.claim("a", cap=5, lease=60, claim_due=60)) == 2


def test_transition_checks_state_and_guard(store: Store) -> None:
    store.register("a", {}, items(1))
    [(iid, token)] = store.claim("a", cap=5, lease=60, claim_due=60)
    assert store.transition("a", iid, expect=(keys.CLAIMED,), guard=("token", "nope"),
                            to=keys.SUBMITTING) == (False, keys.CLAIMED)
    assert store.transition("a", iid, expect=(keys.PENDING,), to=keys.SUBMITTING) == (
        False, keys.CLAIMED)
    assert store.transition("a", iid, expect=(keys.CLAIMED,), guard=("token", token),
                            to=keys.SUBMITTING, values={"+attempts": 1}) == (True, keys.CLAIMED)
    assert store.item("a", iid)["attempts"] == "1"  # type: ignore[index]


def test_counts_follow_public_states(store: Store) -> None:
    store.register("a", {}, items(1))
    [(iid, _)] = store.claim("a", cap=5, lease=60, claim_due=60)
    for state in (keys.SUBMITTING, keys.SUBMITTED, keys.RUNNING, keys.FETCHING, keys.COMPLETED):
        store.transition("a", iid, expect=(store.item("a", iid)["state"],), to=state)  # type: ignore[index]
    counts = store.counts("a")
    assert counts["completed"] == 1 and sum(counts.values()) == 1
    assert store.is_finished("a")


def test_due_and_inflight_entries_are_set_and_removed(store: Store, clock: Clock) -> None:
    store.register("a", {}, items(1))
    [(iid, _)] = store.claim("a", cap=5, lease=60, claim_due=30)
    assert store.overdue(clock.now + 31) == [("a", iid)]
    store.transition("a", iid, expect=(keys.CLAIMED,), to=keys.FAILED, due=REMOVE,
                     inflight=REMOVE)
    assert store.overdue(clock.now + 1000) == []
    assert store.in_flight() == 0


def test_begin_step_counts_deliveries_of_the_same_step(store: Store) -> None:
    store.register("a", {}, items(1))
    store.transition("a", "i0", expect=(keys.PENDING,), to=keys.SUBMITTED, values={"seq": 3})
    assert store.begin_step("a", "i0", expect=(keys.SUBMITTED,), guard=("seq", "3"))[2] == 1
    assert store.begin_step("a", "i0", expect=(keys.SUBMITTED,), guard=("seq", "3"))[2] == 2
    assert store.begin_step("a", "i0", expect=(keys.SUBMITTED,), guard=("seq", "2"))[0] is False


def test_begin_step_tells_how_many_of_the_batch_are_still_to_be_submitted(
        store: Store) -> None:
    store.register("a", {}, items(2))
    store.transition("a", "i0", expect=(keys.PENDING,), to=keys.SUBMITTED, values={"seq": 1})
    step = store.begin_step("a", "i0", expect=(keys.SUBMITTED,), guard=("seq", "1"))
    assert step.batch["pending"] == "1"
    store.transition("a", "i1", expect=(keys.PENDING,), to=keys.SUBMITTED, values={"seq": 1})
    step = store.begin_step("a", "i1", expect=(keys.SUBMITTED,), guard=("seq", "1"))
    assert step.batch["pending"] == "0"


def test_only_sleeping_poll_steps_are_woken(store: Store, clock: Clock) -> None:
    store.register("a", {}, items(4))
    for iid, seq in (("i0", 3), ("i1", 3), ("i2", 7), ("i3", 1)):
        store.transition("a", iid, expect=(keys.PENDING,), to=keys.SUBMITTED,
                         values={"seq": seq, "deliveries": 0})
    store.begin_step("a", "i1", expect=(keys.SUBMITTED,), guard=("seq", "3"))  # running
    store.transition("a", "i3", expect=(keys.SUBMITTED,), to=keys.FETCHING)  # moved on
    woken = store.wake_polls([("a", "i2"), ("a", "i1"), ("a", "i3"), ("a", "i0"),
                              ("a", "gone")], due=clock.now + 60)
    assert woken == [("a", "i2", 8), ("a", "i0", 4)]
    assert store.begin_step("a", "i0", expect=(keys.SUBMITTED,), guard=("seq", "3")).ok is False
    assert store.item("a", "i0")["poll_at"] == repr(clock.now)  # type: ignore[index]
    assert store.item("a", "i1")["seq"] == "3"  # type: ignore[index]
    assert store.item("a", "i3")["seq"] == "1"  # type: ignore[index]
    assert sorted(store.overdue(clock.now + 61)) == [("a", "i0"), ("a", "i2")]
    assert store.wake_polls([], due=clock.now) == []


def test_jobs_waiting_for_timing_are_taken_once_oldest_first(store: Store) -> None:
    for iid, submitted in (("i1", 20.0), ("i2", 30.0), ("i0", 10.0)):
        store.wait_for_timing("m", "a", iid, submitted)
    store.wait_for_timing("other", "a", "i9", 5.0)
    assert store.take_waiting_for_timing("m") == [("a", "i0"), ("a", "i1"), ("a", "i2")]
    assert store.take_waiting_for_timing("m") == []
    assert store.take_waiting_for_timing("other") == [("a", "i9")]


def test_a_model_keeps_its_recent_durations_and_refill_times_newest_first(
        store: Store) -> None:
    store.record_duration("m", 2.0)
    store.record_duration("m", 2.5, refill_time=4.0)
    for k in range(5):
        store.record_duration("other", float(k), refill_time=10.0 + k, keep=3)
    assert store.recent_durations("m") == [2.5, 2.0]
    assert store.recent_refill_times("m") == [4.0]  # only a refill has one
    assert store.recent_durations("other") == [4.0, 3.0, 2.0]
    assert store.recent_refill_times("other") == [14.0, 13.0, 12.0]


def test_submit_rate_is_shared_and_cooldown_holds_everyone(store: Store, clock: Clock) -> None:
    waits = [store.acquire_submit(rate=2.0, burst=2.0) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(0.5)
    clock.now += 1
    assert store.acquire_submit(rate=2.0, burst=2.0) == 0.0
    store.cool_down(5)
    assert store.acquire_submit(rate=2.0, burst=2.0) == pytest.approx(5.0)


def test_a_registered_item_records_its_input_and_only_the_extras_it_has(store: Store) -> None:
    store.register("b", {}, [
        NewItem("a", "f.jsonl", 1, "m", {"prompt": "é"}, {"estimate": "0.03"}),
        NewItem("c", "f.jsonl", 2, "m", {"prompt": "q"}, {"estimate": "0.04", "sweep": "{}"}),
        NewItem("a", "f.jsonl", 3, "m", {"prompt": "again"}),  # the same id later: kept once
    ])
    first = store.item("b", "a")
    assert first == {"id": "a", "file": "f.jsonl", "line": "1", "model": "m",
                     "input": '{"prompt":"é"}', "estimate": "0.03", "state": keys.PENDING,
                     "attempts": "0", "seq": "0", "deliveries": "0", "registered_at": "1000.0"}
    assert store.item("b", "c")["sweep"] == "{}"  # type: ignore[index]
    assert store.item_ids("b") == ["a", "c"]
    assert store.counts("b")["pending"] == 2


def _finish(store: Store, bid: str) -> None:
    for iid, _ in store.claim(bid, cap=10, lease=60, claim_due=60):
        store.transition(bid, iid, expect=(keys.CLAIMED,), to=keys.COMPLETED, due=REMOVE,
                         inflight=REMOVE)
    store.set_batch(bid, finished_at=str(store.clock()))


def test_marking_a_finished_batch_inactive_gives_its_records_the_retention(
        clock: Clock) -> None:
    client = fakeredis.FakeRedis()
    store = Store(client, clock=clock, retention=600)
    store.register("b", {"name": "n"}, items(2))
    _finish(store, "b")
    store.mark_inactive("b")
    assert store.active_batches() == []
    ttls = [store.redis.pttl(k) for k in (keys.batch("b"), keys.counts("b"), keys.order("b"),
                                     keys.item("b", "i0"), keys.item("b", "i1"))]
    assert all(590_000 < ttl <= 600_000 for ttl in ttls), ttls
    assert client.hget(keys.tombstone("b"), "state") == b"finished"


def test_a_name_whose_batch_records_are_gone_is_free(store: Store) -> None:
    store.register("b", {"name": "n"}, items(1))
    store.redis.delete(keys.batch("b"))  # as after the records expired
    assert store.batch_id_for_name("n") is None
