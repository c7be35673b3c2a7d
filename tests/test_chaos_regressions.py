"""What the chaos run found and what it needed, each pinned down in a fast test.

- A worker SIGKILLed while it held a claimed item's submit nudge, or in the middle of a
  submit call, leaves the item for the reconciler. Its deadlines were fixed (120 s and 180 s)
  whatever `RCBATCH_STEP_GRACE` said, so a deployment (or the chaos test) that asks for quick
  recovery still waited minutes. They now follow the grace and the HTTP timeouts
  (worker/wiring.py); checked with tests/test_steps.py's fakes.
- The simulator faults the chaos run added: content refusals, connection resets, and a job
  listing that tells which body each job was paid for and what became of its answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable

import httpx
import pytest

from rcbatch.config.settings import Settings
from rcbatch.errors import ApiRejected, SubmitUncertain
from rcbatch.runcomfy.answers import SubmitAnswer
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.worker import keys, reconciler
from rcbatch.worker.runtime import Limits
from rcbatch.worker.wiring import limits_from
from tests.test_client_simulator import TOKEN, run
from tests.test_steps import Harness

QUICK = Settings(_env_file=None, step_grace=5, http_connect_timeout=2,  # type: ignore[call-arg]
                 http_read_timeout=2)


def quick_limits() -> Limits:
    return dataclasses.replace(limits_from(QUICK), max_in_flight=8, submit_rate=1000)


def test_reconciler_deadlines_follow_the_grace_and_the_http_timeouts() -> None:
    limits = limits_from(QUICK)
    assert limits.claim_due == 10  # twice the grace
    assert limits.submit_due == 2 + 2 * 2 + 5  # connect + write + read, plus the grace


def test_the_default_deadline_never_calls_a_running_submit_uncertain() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    longest_call = settings.http_connect_timeout + 2 * settings.http_read_timeout
    assert limits_from(settings).submit_due > longest_call


def test_a_submit_whose_worker_died_mid_call_is_uncertain_after_the_grace() -> None:
    h = Harness(limits=quick_limits())
    [iid] = h.register(1)
    # The job is created, then the worker dies before the answer is recorded.
    h.api.fail_next("submit", exc=RuntimeError("SIGKILL"), after_processing=True)
    with pytest.raises(RuntimeError):
        h.step()
    assert h.state(iid) == keys.SUBMITTING
    h.clock.now += 10
    reconciler.reconcile(h.rt)
    assert h.state(iid) == keys.SUBMITTING  # the call might still be running
    h.clock.now += 2
    reconciler.reconcile(h.rt)
    assert h.state(iid) == keys.SUBMIT_UNCERTAIN
    assert len(h.api.jobs) == 1 and len(h.api.calls("submit")) == 1


def test_a_submit_nudge_lost_with_its_worker_is_sent_again_after_twice_the_grace() -> None:
    h = Harness(limits=quick_limits())
    [iid] = h.register(1)
    h.publisher.sent.clear()  # the claimed item's nudge died with the worker holding it
    h.clock.now += 9
    reconciler.reconcile(h.rt)
    assert h.publisher.take("submit") == []
    h.clock.now += 2
    reconciler.reconcile(h.rt)
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert len(h.api.calls("submit")) == 1


T2I = "bytedance/dreamina-4-0/text-to-image"
BODY = {"prompt": "a lighthouse", "force_single": True}


def digest(model: str, body: dict[str, object]) -> str:
    text = json.dumps([model, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def listing(server: SimulatorServer) -> dict[str, list[dict[str, object]]]:
    return httpx.get(f"{server.base_url}/_sim/jobs").json()


def sim(**faults: object) -> SimulatorServer:
    return SimulatorServer(SimulatorConfig(token=TOKEN, duration=(0.02, 0.05), seed=5,
                                           image_scale=0.02, **faults))  # type: ignore[arg-type]


def submit(client: RunComfyClient) -> Awaitable[SubmitAnswer]:
    return client.submit(T2I, BODY)


def test_a_reset_submit_is_uncertain_creates_no_job_and_is_listed() -> None:
    with sim(reset=1.0) as server:
        with pytest.raises(SubmitUncertain, match=r"ReadError|reset"):
            run(submit, server.base_url)
        jobs = listing(server)
    assert jobs["jobs"] == []
    assert [(w["reason"], w["body_sha256"]) for w in jobs["without_job"]] == [
        ("reset", digest(T2I, BODY))]


def test_a_refused_body_fails_with_the_api_message_and_is_refused_again() -> None:
    with sim(refuse=1.0) as server:
        for _ in range(2):
            with pytest.raises(ApiRejected, match="content filter"):
                run(submit, server.base_url)
        jobs = listing(server)
        stats = httpx.get(f"{server.base_url}/_sim/stats").json()
    assert jobs["jobs"] == [] and stats["faults"]["refuse"] == 2
    assert {w["reason"] for w in jobs["without_job"]} == {"refuse"}


def test_the_job_listing_names_the_body_paid_for_and_its_lost_answer() -> None:
    with sim(lost_submit=1.0) as server:
        with pytest.raises(SubmitUncertain):
            run(submit, server.base_url)
        (job,) = listing(server)["jobs"]
    assert job["body_sha256"] == digest(T2I, BODY) and job["answer"] == "lost"
    assert isinstance(job["client_port"], int)
