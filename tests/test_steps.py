"""The pipeline's steps as plain functions: fakeredis, the fake API, a memory bucket.

Nudges are recorded by `RecordingPublisher` and run by `drive()` in order (countdowns are
ignored, the clock is moved by hand), so every path through submit, poll and fetch is tested
without Celery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fakeredis
import httpx
import pytest

from rcbatch.runcomfy.fake import FakeRunComfy
from rcbatch.worker import fetching, keys, polling, reconciler, submission
from rcbatch.worker.bucket import MemoryBucket
from rcbatch.worker.refs import StepRef
from rcbatch.worker.runtime import Limits, RecordingPublisher, Runtime
from rcbatch.worker.state import NewItem, Store

MODEL = "bytedance/dreamina-4-0/text-to-image"


STEPS: dict[str, Callable[[Runtime, StepRef], None]] = {
    "submit": submission.submit, "poll": polling.poll, "fetch": fetching.fetch}


def ref(kind: str, args: tuple[Any, ...]) -> StepRef:
    """The step's ref of a recorded submit, poll or fetch nudge, as worker/tasks.py builds it."""
    return StepRef.claimed(*args) if kind == "submit" else StepRef.at_seq(*args)


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A runtime over fakes, plus helpers to register items and run recorded nudges."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.clock = Clock()
        self.api = FakeRunComfy()
        self.bucket = MemoryBucket()
        self.publisher = RecordingPublisher()
        self.store = Store(fakeredis.FakeRedis(), clock=self.clock)
        self.rt = Runtime(store=self.store, client=self.api.client(),
                          buckets=lambda _url: self.bucket, publisher=self.publisher,
                          limits=limits or Limits(max_in_flight=8, submit_rate=1000),
                          clock=self.clock, refill=submission.refill)

    def register(self, n: int, bid: str = "b") -> list[str]:
        specs = [NewItem(f"i{k}", "in.jsonl", k + 1, MODEL, {"prompt": f"p{k}"})
                 for k in range(n)]
        self.store.register(bid, {"name": bid, "bucket_url": "memory://test"}, specs)
        submission.dispatch(self.rt)
        return [s.item_id for s in specs]

    def step(self) -> tuple[str, tuple[Any, ...]]:
        kind, args, countdown = self.publisher.sent.pop(0)
        self.clock.now += countdown  # time passes as the nudge waits
        if kind in STEPS:
            STEPS[kind](self.rt, ref(kind, args))
        return kind, args

    def drive(self, limit: int = 500) -> None:
        for _ in range(limit):
            if not self.publisher.sent:
                return
            self.step()
        raise AssertionError("the pipeline did not settle")

    def state(self, iid: str, bid: str = "b") -> str:
        return self.store.item(bid, iid)["state"]  # type: ignore[index]

    def error(self, iid: str, bid: str = "b") -> dict[str, str]:
        return json.loads(self.store.item(bid, iid)["error"])  # type: ignore[index]


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_items_complete_with_outputs_matching_their_sha256(h: Harness) -> None:
    ids = h.register(3)
    h.drive()
    assert [h.state(i) for i in ids] == [keys.COMPLETED] * 3
    for iid in ids:
        outputs = json.loads(h.store.item("b", iid)["outputs"])  # type: ignore[index]
        assert outputs and outputs[0]["key"] == f"b/{iid}/0.png"
        data = h.bucket.get_bytes(outputs[0]["key"])
        assert hashlib.sha256(data).hexdigest() == outputs[0]["sha256"]
        assert len(data) == outputs[0]["bytes"]
    assert len(h.api.calls("submit")) == 3
    assert h.store.is_finished("b") and h.store.in_flight() == 0


def test_a_duplicated_poll_exits_without_rescheduling(h: Harness) -> None:
    [_iid] = h.register(1)
    h.step()  # submit
    [(kind, args, _)] = h.publisher.sent
    assert kind == "poll"
    h.step()
    polls_before = len(h.api.calls("result"))
    polling.poll(h.rt, ref(kind, args))  # the same message delivered again
    assert len(h.api.calls("result")) == polls_before
    assert [k for k, _, _ in h.publisher.sent] == ["poll"]


def test_a_submit_redelivered_after_a_crash_is_never_sent_and_ends_uncertain(
        h: Harness) -> None:
    [iid] = h.register(1)
    # The worker marked the item `submitting` and died during the HTTP call.
    h.store.transition("b", iid, expect=(keys.CLAIMED,), to=keys.SUBMITTING,
                       due=h.clock.now + h.rt.limits.submit_due)
    h.drive()  # the redelivered nudge
    assert h.state(iid) == keys.SUBMITTING and h.api.calls("submit") == []
    h.clock.now += h.rt.limits.submit_due + 1
    reconciler.reconcile(h.rt)
    assert h.state(iid) == keys.SUBMIT_UNCERTAIN
    assert h.api.calls("submit") == []


def test_a_lost_submit_answer_is_never_resent(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("submit", exc=httpx.ReadTimeout("lost"), after_processing=True)
    h.drive()
    assert h.state(iid) == keys.SUBMIT_UNCERTAIN
    assert h.error(iid)["kind"] == "submit_uncertain"
    assert len(h.api.jobs) == 1 and len(h.api.calls("submit")) == 1


def test_a_429_cools_everyone_down_and_the_item_is_sent_once(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("submit", status=429, headers={"Retry-After": "7"})
    h.step()
    assert h.store.acquire_submit(1000) == pytest.approx(7.0, abs=0.01)
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert len(h.api.jobs) == 1


def test_a_refused_connection_is_retried_then_succeeds(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("submit", times=2, exc=httpx.ConnectError("refused"))
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert len(h.api.jobs) == 1


def test_a_rejected_body_fails_at_once_with_the_api_message(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("submit", status=422, body={"error_message": "prompt: too long"})
    h.drive()
    assert h.state(iid) == keys.FAILED
    assert h.error(iid) == {"kind": "api_rejected", "message": "prompt: too long"}


def test_a_refused_token_pauses_the_batch_instead_of_burning_items(h: Harness) -> None:
    ids = h.register(3)
    h.api.fail_next("submit", times=10, status=401, body={"error_message": "bad token"})
    h.drive()
    assert h.store.batch("b")["state"] == keys.BATCH_PAUSED  # type: ignore[index]
    assert [h.state(i) for i in ids] == [keys.PENDING] * 3
    assert len(h.api.calls("submit")) == 1


def test_a_failed_job_fails_the_item_with_the_api_error(h: Harness) -> None:
    h.api.error_for = lambda model, body: {"message": "content refused"}
    [iid] = h.register(1)
    h.drive()
    assert h.state(iid) == keys.FAILED
    assert h.error(iid)["kind"] == "job_failed"
    assert "content refused" in h.error(iid)["message"]


def test_an_output_that_stays_gone_fails_as_output_lost(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("download", times=50, status=404)
    h.drive()
    assert h.state(iid) == keys.FAILED
    assert h.error(iid)["kind"] == "output_lost"
    assert h.bucket.list_keys("b/") == []


def test_a_broken_download_is_retried(h: Harness) -> None:
    [iid] = h.register(1)
    h.api.fail_next("download", times=2, status=503)
    h.drive()
    assert h.state(iid) == keys.COMPLETED


def test_the_reconciler_redrives_a_lost_poll(h: Harness) -> None:
    [iid] = h.register(1)
    h.step()  # submit; its poll nudge is lost
    h.publisher.sent.clear()
    assert reconciler.reconcile(h.rt) == 0  # nothing overdue yet
    h.clock.now += 1000
    assert reconciler.reconcile(h.rt) == 1
    h.drive()
    assert h.state(iid) == keys.COMPLETED


def test_the_reconciler_makes_a_stuck_submission_uncertain(h: Harness) -> None:
    [iid] = h.register(1)
    h.store.transition("b", iid, expect=(keys.CLAIMED,), to=keys.SUBMITTING,
                       due=h.clock.now + 5)
    h.publisher.sent.clear()
    h.clock.now += 10
    reconciler.reconcile(h.rt)
    assert h.state(iid) == keys.SUBMIT_UNCERTAIN
    assert h.api.calls("submit") == []


def test_a_step_that_keeps_crashing_its_worker_fails_as_worker_lost(h: Harness) -> None:
    [iid] = h.register(1)
    h.step()  # submitted; a poll is due
    [(kind, args, _)] = h.publisher.sent
    for _ in range(h.rt.limits.max_deliveries):
        h.store.begin_step(ref(kind, args), expect=(keys.SUBMITTED,))
    polling.poll(h.rt, ref(kind, args))
    assert h.state(iid) == keys.FAILED
    assert h.error(iid)["kind"] == "worker_lost"


class WorkerDied(BaseException):
    """Stands for the process dying in the middle of a step (nothing after it runs)."""


def test_a_fetch_that_keeps_crashing_its_worker_counts_the_one_run_inline(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    [iid] = h.register(1)
    starts = []

    async def dies(*_args: Any, **_kwargs: Any) -> None:
        starts.append(h.clock.now)
        raise WorkerDied

    monkeypatch.setattr(h.bucket, "put_stream", dies)
    with pytest.raises(WorkerDied):
        h.drive()  # the poll that sees the job done stores its outputs inline: the worker dies
    assert h.state(iid) == keys.FETCHING and len(starts) == 1
    while h.state(iid) == keys.FETCHING:
        h.clock.now += 1000
        reconciler.reconcile(h.rt)  # the fetch is overdue: sent again
        with contextlib.suppress(WorkerDied):
            h.drive()
    assert h.error(iid)["kind"] == "worker_lost"
    assert len(starts) == h.rt.limits.max_deliveries


def test_a_submit_that_keeps_crashing_its_worker_fails_unsent(h: Harness) -> None:
    [iid] = h.register(1)
    [(kind, args, _)] = h.publisher.sent
    for _ in range(h.rt.limits.max_deliveries):  # started, then the worker died, each time
        h.store.begin_step(ref(kind, args), expect=(keys.CLAIMED,))
    submission.submit(h.rt, ref(kind, args))
    assert h.state(iid) == keys.FAILED and h.api.calls("submit") == []
    assert h.error(iid)["kind"] == "worker_lost"


def test_the_in_flight_cap_holds_back_submissions() -> None:
    h = Harness(Limits(max_in_flight=2, submit_rate=1000))
    h.register(5)
    assert len(h.publisher.sent) == 2
    h.drive()
    counts = h.store.counts("b")
    assert counts["completed"] == 5
    assert len(h.api.calls("submit")) == 5


def test_a_cancelled_batch_submits_nothing_more(h: Harness) -> None:
    from rcbatch.worker.operations import cancel_batch

    ids = h.register(3)
    cancel_batch(h.store, "b")
    h.drive()
    assert [h.state(i) for i in ids] == [keys.CANCELLED] * 3
    assert h.api.calls("submit") == []


def test_cancel_asks_the_api_to_cancel_a_queued_job(h: Harness) -> None:
    from rcbatch.worker.operations import cancel_batch

    [iid] = h.register(1)
    h.step()  # submitted, queued at the API
    cancel_batch(h.store, "b")
    h.drive()
    assert h.state(iid) == keys.CANCELLED
    assert len(h.api.calls("cancel")) == 1


def test_a_running_job_of_a_cancelled_batch_still_lands(h: Harness) -> None:
    from rcbatch.worker.operations import cancel_batch

    [iid] = h.register(1)
    h.step()  # submitted
    h.step()  # first poll: the fake moves it to in_progress
    cancel_batch(h.store, "b")
    h.drive()
    assert h.state(iid) == keys.COMPLETED  # paid for, so its outputs are kept
    assert h.api.calls("cancel") == []


def test_a_budget_admits_exactly_what_it_affords_and_holds_the_rest() -> None:
    h = Harness(Limits(max_in_flight=30, submit_rate=1000))
    specs = [NewItem(f"i{k}", "in.jsonl", k + 1, MODEL, {"prompt": f"p{k}"},
                     {"estimate": "0.03"}) for k in range(30)]
    h.store.register("b", {"name": "b", "bucket_url": "memory://test", "max_cost": "0.3"},
                     specs)
    submission.dispatch(h.rt)
    h.drive()
    counts = h.store.counts("b")
    assert len(h.api.calls("submit")) == 10
    assert (counts["completed"], counts["pending"]) == (10, 20)
    record = h.store.batch("b")
    assert record["state"] == keys.BATCH_PAUSED and "budget" in record["pause_reason"]  # type: ignore[index]


def test_a_refused_submission_gives_its_reservation_back() -> None:
    h = Harness()
    specs = [NewItem("i0", "in.jsonl", 1, MODEL, {"prompt": "p"}, {"estimate": "0.03"})]
    h.store.register("b", {"name": "b", "bucket_url": "memory://test", "max_cost": "1"},
                     specs)
    h.api.fail_next("submit", status=422, body={"error_message": "no"})
    submission.dispatch(h.rt)
    h.drive()
    assert float(h.store.batch("b")["reserved_cost"]) == pytest.approx(0.0)  # type: ignore[index]


def test_each_state_change_is_one_event_with_the_item_and_request_bound(h: Harness) -> None:
    import structlog

    with structlog.testing.capture_logs() as events:
        [iid] = h.register(1)
        h.drive()
    mine = [e for e in events if e.get("item_id") == iid]
    names = [e["event"] for e in mine]
    assert names[0] == "item_submitted" and names[-1] == "item_completed"
    assert "item_fetching" in names
    request_id = h.store.item("b", iid)["request_id"]  # type: ignore[index]
    assert all(e["batch_id"] == "b" and e["request_id"] == request_id for e in mine)


def test_cancel_with_discard_stores_nothing_more(h: Harness) -> None:
    from rcbatch.worker.operations import cancel_batch

    [iid] = h.register(1)
    h.step()  # submitted
    h.step()  # running at the API
    cancel_batch(h.store, "b", discard=True)
    h.drive()
    assert h.state(iid) == keys.CANCELLED
    assert h.bucket.list_keys("b/") == [] and h.api.calls("download") == []


def test_a_scheduled_batch_waits_for_its_time_then_runs(h: Harness) -> None:
    from rcbatch.cli.progress import batch_state

    specs = [NewItem("i0", "in.jsonl", 1, MODEL, {"prompt": "p"})]
    h.store.register("b", {"name": "b", "bucket_url": "memory://test",
                           "start_at": str(h.clock.now + 3600)}, specs, start=False)
    reconciler.reconcile(h.rt)
    assert batch_state(h.store.batch("b"), h.store.counts("b")) == "scheduled"  # type: ignore[arg-type]
    assert h.publisher.sent == []
    h.clock.now += 3601
    reconciler.reconcile(h.rt)
    h.drive()
    assert h.state("i0") == keys.COMPLETED


def test_a_slot_freed_by_a_finished_job_is_refilled_by_a_submit_in_the_same_step() -> None:
    h = Harness(Limits(max_in_flight=2, submit_rate=1000))
    ids = h.register(5)
    kinds = [h.step()[0] for _ in range(200) if h.publisher.sent]
    assert [h.state(i) for i in ids] == [keys.COMPLETED] * 5
    assert len(h.api.calls("submit")) == 5
    assert kinds.count("submit") == 2  # the first two; each later one rode on a finished poll


def test_a_job_seen_done_refills_its_own_slot_noting_when_that_slot_freed() -> None:
    h = Harness(Limits(max_in_flight=2, submit_rate=1000))
    h.register(4)
    h.step(), h.step()  # the first two submits
    h.rt.limits = replace(h.rt.limits, max_in_flight=3)  # a third slot, not freed by a job
    while h.state("i0") != keys.COMPLETED and h.state("i1") != keys.COMPLETED:
        h.step()
    done = "i0" if h.state("i0") == keys.COMPLETED else "i1"
    ended = float(h.store.item("b", done)["submitted_at"]) + 30.0  # type: ignore[index]
    assert [h.state(i) for i in ("i2", "i3")] == [keys.SUBMITTED, keys.PENDING]
    assert float(h.store.item("b", "i2")["slot_freed_at"]) == ended  # type: ignore[index]
    h.drive()  # the third slot is filled by the next dispatch
    assert h.state("i3") == keys.COMPLETED


def test_a_run_of_refused_items_refills_without_recursing() -> None:
    h = Harness(Limits(max_in_flight=1, submit_rate=1000))
    ids = h.register(60)
    h.api.fail_next("submit", times=60, status=422, body={"error_message": "no"})
    h.step()  # the first refusal refills inline once; the next refill is left to a nudge
    assert [k for k, _, _ in h.publisher.sent if k != "manifest"] == ["submit"]
    h.drive()
    assert [h.state(i) for i in ids] == [keys.FAILED] * 60
    assert len(h.api.calls("submit")) == 60
