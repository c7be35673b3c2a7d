"""An unreachable API or bucket never fails items: the batch pauses with its reason and goes on
when the service answers again.

The steps run over the fakes of tests/test_steps.py, with the API behind a switch that makes
every call fail as an unreachable host does (connection refused, or a 5xx for every call).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from rcbatch.errors import RetryLater
from rcbatch.runcomfy.addresses import AddressPolicy, StaticResolver
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.fake import FAKE_CDN_ADDRESS
from rcbatch.worker import keys, reconciler
from rcbatch.worker.bucket.base import UNAVAILABLE
from tests.test_steps import Harness

HOST = "model-api.runcomfy.net"


class Switch:
    """The fake API behind an on/off switch: off, every call fails before reaching it."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.down: Callable[[httpx.Request], httpx.Response] | None = None
        h.rt.client = RunComfyClient("secret-token-0123456789", str(h.api.base),
                                     transport=httpx.MockTransport(self),
                                     addresses=AddressPolicy(resolver=StaticResolver(
                                         default=[FAKE_CDN_ADDRESS])))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down is not None and request.url.host == HOST:
            return self.down(request)
        return self.h.api(request)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connect call failed", request=request)


def bad_gateway(request: httpx.Request) -> httpx.Response:
    return httpx.Response(502, text="<html>bad gateway</html>")


def run_for(h: Harness, seconds: float) -> float | None:
    """Run nudges and reconciler sweeps (every 5 s) for `seconds` of the harness's clock;
    returns how long after the start the batch was first seen paused (None: never)."""
    start, paused_after = h.clock.now, None
    while h.clock.now - start < seconds:
        if h.publisher.sent and h.publisher.sent[0][2] <= 5:
            h.step()
        else:
            h.clock.now += 5
            h.publisher.sent = [(kind, args, max(0.0, countdown - 5))  # 5 s nearer
                                for kind, args, countdown in h.publisher.sent]
            reconciler.reconcile(h.rt)
        if paused_after is None and batch(h).get("state") == keys.BATCH_PAUSED:
            paused_after = h.clock.now - start
    return paused_after


def batch(h: Harness) -> dict[str, str]:
    return h.store.batch("b") or {}


def states(h: Harness, ids: list[str]) -> set[str]:
    return {h.state(i) for i in ids}


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_a_long_outage_pauses_the_batch_naming_the_host_and_fails_nothing(h: Harness) -> None:
    api = Switch(h)
    api.down = refused
    ids = h.register(8)
    paused_after = run_for(h, 600)
    assert paused_after is not None and paused_after <= 30
    record = batch(h)
    assert record["state"] == keys.BATCH_PAUSED and record["pause_kind"] == "outage"
    assert record["pause_reason"] == (f"the RunComfy API at {HOST} is unreachable "
                                      f"(connection refused)")
    # never sent: back to pending, none failed or uncertain, nothing spent
    assert states(h, ids) == {keys.PENDING}
    assert h.store.counts("b")["pending"] == 8
    assert h.api.calls("submit") == []
    assert "secret-token" not in json.dumps(record)


def test_the_pause_lifts_by_itself_when_the_api_answers_and_every_item_is_sent_once(
        h: Harness) -> None:
    api = Switch(h)
    api.down = refused
    ids = h.register(8)
    run_for(h, 120)
    assert batch(h)["pause_kind"] == "outage"
    api.down = None
    run_for(h, 60)  # the reconciler's probe finds it back, then dispatch sends the items
    assert batch(h)["state"] == keys.BATCH_RUNNING and batch(h)["pause_kind"] == ""
    h.drive()
    assert states(h, ids) == {keys.COMPLETED}
    assert len(h.api.calls("submit")) == 8
    assert len({json.dumps(b, sort_keys=True) for b in h.api.submitted_bodies}) == 8


def test_jobs_in_flight_keep_being_polled_through_an_outage_and_complete_after(
        h: Harness) -> None:
    api = Switch(h)
    ids = h.register(3)
    for _ in ids:
        h.step()  # the three submits, accepted
    assert states(h, ids) == {keys.SUBMITTED}
    api.down = bad_gateway  # a 5xx for every call counts as the API being down
    run_for(h, 900)
    assert batch(h)["pause_kind"] == "outage"
    assert "HTTP 502" in batch(h)["pause_reason"] and HOST in batch(h)["pause_reason"]
    assert states(h, ids) == {keys.SUBMITTED}
    assert all(int(h.store.item("b", i).get("step_errors", 0)) == 0  # type: ignore[union-attr]
               for i in ids)
    assert [k for k, _, _ in h.publisher.sent].count("poll") == 3  # still planned
    api.down = None
    for rid in list(h.api.jobs):
        h.api.finish(rid)
    h.drive()
    assert states(h, ids) == {keys.COMPLETED}
    assert batch(h)["state"] == keys.BATCH_RUNNING and batch(h)["pause_kind"] == ""


def test_one_failed_call_does_not_pause_the_batch(h: Harness) -> None:
    h.api.fail_next("submit", exc=httpx.ConnectError("refused"))
    [iid] = h.register(1)
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert batch(h)["state"] == keys.BATCH_RUNNING


def test_rate_limiting_is_not_an_outage(h: Harness) -> None:
    h.api.fail_next("submit", times=3, status=429, headers={"Retry-After": "20"})
    [iid] = h.register(1)
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert batch(h).get("pause_kind", "") == ""


def test_an_unreachable_bucket_pauses_the_batch_and_the_outputs_are_stored_later(
        h: Harness) -> None:
    ids = h.register(2)
    h.bucket.fail_with = RetryLater("S3: cannot write: Connect timeout", kind=UNAVAILABLE)
    run_for(h, 600)
    record = batch(h)
    assert record["pause_kind"] == "outage"
    assert record["pause_reason"].startswith("the bucket memory://test is unreachable")
    assert states(h, ids) == {keys.FETCHING}
    h.bucket.fail_with = None
    run_for(h, 60)
    h.drive()
    assert states(h, ids) == {keys.COMPLETED}
    assert batch(h)["state"] == keys.BATCH_RUNNING
