"""Submitting a dispatch's claimed items in groups (`submission.submit_group`): each item is
checked and guarded as a lone submit is, their API calls go out together, and no fault of one
item sends another twice or strands it.

Fakes only (fakeredis, the fake API, a transport that holds answers back); the groups run for
real through Celery in every end-to-end test (tests/test_journeys.py, test_chaos.py).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.worker import keys, reconciler, submission
from rcbatch.worker.refs import StepRef
from rcbatch.worker.runtime import Limits
from rcbatch.worker.state import NewItem
from tests.test_steps import MODEL, Harness


def claimed_group(h: Harness, n: int, limits: Limits | None = None) -> list[StepRef]:
    """Register `n` items (one dispatch: a group of them) and return its refs, the
    recorded nudges cleared."""
    h.register(n)
    assert len(h.publisher.groups) == 1 and len(h.publisher.groups[0]) == n
    refs = [StepRef.claimed(*claim) for claim in h.publisher.groups[0]]
    h.publisher.sent.clear()
    return refs


def states(h: Harness, refs: list[StepRef]) -> list[str]:
    return [h.state(r.iid) for r in refs]


def test_a_dispatch_nudges_its_claimed_items_in_groups_each_item_once() -> None:
    h = Harness(Limits(max_in_flight=20, submit_rate=1000))
    ids = h.register(30)
    sizes = [len(g) for g in h.publisher.groups]
    assert sizes == [8, 8, 4]  # 20 slots: two full groups and the rest
    grouped = [iid for group in h.publisher.groups for _, iid, _ in group]
    assert sorted(grouped) == sorted(ids[:20]) and len(set(grouped)) == 20


def test_a_lone_claimed_item_is_nudged_as_a_plain_submit() -> None:
    h = Harness(Limits(max_in_flight=9, submit_rate=1000))
    h.register(9)
    assert [len(g) for g in h.publisher.groups] == [8]
    assert len(h.publisher.take("submit")) == 9  # the group's 8 (recorded as submits) + 1


def test_a_group_is_submitted_once_each_and_a_redelivered_group_sends_nothing() -> None:
    h = Harness()
    refs = claimed_group(h, 6)
    submission.submit_group(h.rt, refs)
    assert states(h, refs) == [keys.SUBMITTED] * 6
    rids = {h.store.item("b", r.iid)["request_id"] for r in refs}  # type: ignore[index]
    assert len(rids) == 6 and len(h.api.calls("submit")) == 6
    submission.submit_group(h.rt, refs)  # the broker delivers the message again
    assert len(h.api.calls("submit")) == 6
    h.drive()
    assert states(h, refs) == [keys.COMPLETED] * 6


class HeldAnswers(httpx.AsyncBaseTransport):
    """Answers no submit until `n` of them are in flight at once (proof that a group's calls
    go out together); a lone call would wait for the others until the test fails."""

    def __init__(self, n: int) -> None:
        self.n, self.waiting, self.most = n, 0, 0
        self.all_in = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        if self.waiting >= self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), timeout=5)
        rid = f"held-{self.most}-{self.waiting}"
        self.waiting -= 1
        return httpx.Response(200, json={"request_id": rid})


def test_a_groups_api_calls_are_in_flight_together() -> None:
    h = Harness()
    refs = claimed_group(h, 5)
    held = HeldAnswers(5)
    h.rt.client = RunComfyClient("a-token-of-the-test", "http://127.0.0.1:9", transport=held)
    submission.submit_group(h.rt, refs)
    assert held.most == 5
    assert states(h, refs) == [keys.SUBMITTED] * 5


def test_each_answer_of_a_group_is_recorded_as_for_a_lone_submit() -> None:
    h = Harness()
    refs = claimed_group(h, 4)
    # the calls reach the fake API in the group's order: refused, answer lost, 429, accepted
    h.api.fail_next("submit", status=400, body={"error_code": 400003, "error_message": "bad"})
    h.api.fail_next("submit", exc=httpx.ReadTimeout("lost"), after_processing=True)
    h.api.fail_next("submit", status=429)
    submission.submit_group(h.rt, refs)
    assert states(h, refs) == [keys.FAILED, keys.SUBMIT_UNCERTAIN, keys.CLAIMED,
                               keys.SUBMITTED]
    assert h.error(refs[0].iid)["kind"] != "submit_uncertain"
    retried = [args[1] for kind, args, _ in h.publisher.sent if kind == "submit"]
    assert retried == [refs[2].iid]  # only the 429 is nudged again
    h.drive()
    assert states(h, refs) == [keys.FAILED, keys.SUBMIT_UNCERTAIN, keys.COMPLETED,
                               keys.COMPLETED]
    assert len(h.api.jobs) == 3  # the lost answer's job exists once, never re-sent


def test_an_unexpected_error_for_one_item_settles_the_others_and_leaves_it_uncertain() -> None:
    h = Harness()
    refs = claimed_group(h, 4)
    h.api.fail_next("submit", exc=RuntimeError("a bug after sending"), after_processing=True)
    with pytest.raises(RuntimeError):
        submission.submit_group(h.rt, refs)
    assert states(h, refs) == [keys.SUBMITTING] + [keys.SUBMITTED] * 3
    submission.submit_group(h.rt, refs)  # redelivered: the one that may have left is not re-sent
    assert len(h.api.calls("submit")) == 4
    h.clock.now += h.rt.limits.submit_due + 1
    reconciler.reconcile(h.rt)
    assert h.state(refs[0].iid) == keys.SUBMIT_UNCERTAIN


def test_an_item_whose_own_step_breaks_is_left_to_its_deadline_and_the_rest_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    refs = claimed_group(h, 3)
    begin = h.store.begin_step

    def redis_gone_for_the_second(ref: StepRef, **kw: object) -> object:
        if ref.iid == refs[1].iid:
            raise ConnectionError("Redis went away")
        return begin(ref, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(h.store, "begin_step", redis_gone_for_the_second)
    submission.submit_group(h.rt, refs)
    assert states(h, refs) == [keys.SUBMITTED, keys.CLAIMED, keys.SUBMITTED]
    monkeypatch.undo()
    h.clock.now += h.rt.limits.claim_due + 1
    reconciler.reconcile(h.rt)  # its claim's deadline passed: nudged again, alone
    h.drive()
    assert states(h, refs) == [keys.COMPLETED] * 3
    assert len(h.api.calls("submit")) == 3


def test_a_budget_reached_inside_a_group_holds_the_rest_unsent() -> None:
    h = Harness()
    specs = [NewItem(f"i{k}", "in.jsonl", k + 1, MODEL, {"prompt": f"p{k}"},
                     {"estimate": "0.03"}) for k in range(6)]
    h.store.register("b", {"name": "b", "bucket_url": "memory://test", "max_cost": "0.09"},
                     specs)
    submission.dispatch(h.rt)
    refs = [StepRef.claimed(*claim) for claim in h.publisher.groups[0]]
    h.publisher.sent.clear()
    submission.submit_group(h.rt, refs)
    assert states(h, refs) == [keys.SUBMITTED] * 3 + [keys.PENDING] * 3
    assert len(h.api.calls("submit")) == 3
    batch = h.store.batch("b") or {}
    assert batch["state"] == keys.BATCH_PAUSED and batch["pause_kind"] == keys.PAUSE_BUDGET


def test_marks_that_did_not_reach_a_replica_send_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    refs = claimed_group(h, 3)
    monkeypatch.setattr(h.store, "on_a_replica", lambda: False)
    submission.submit_group(h.rt, refs)
    assert h.api.calls("submit") == []
    assert states(h, refs) == [keys.CLAIMED] * 3
    errors = [json.loads(h.store.item("b", r.iid)["last_error"])  # type: ignore[index]
              for r in refs]
    assert {e["kind"] for e in errors} == {"replication"}
    monkeypatch.undo()
    h.drive()
    assert states(h, refs) == [keys.COMPLETED] * 3 and len(h.api.calls("submit")) == 3
