"""The chaos test, short version: the same code as `python -m bench.chaos`, with a small N.

Real processes throughout: an embedded Redis (append-only) that is SIGKILLed and restarted
twice on the same port and data folder, the simulator in its own process injecting every
fault class, and `rcbatch worker` processes only (no beat; each with its own state folder, as
on separate machines) whose pool children and main processes get SIGKILL every few seconds,
the worker holding the clock lease (the reconciler's clock) among them. At the end every
item must be completed, failed with a reason the run injected, or submit_uncertain with an
explanation; none lost; no submission paid twice; every stored object's sha256 as the
manifest says.
"""

from __future__ import annotations

import pytest

from bench.chaos import ChaosConfig, ChaosResult, report, run_chaos
from bench.table import markdown

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ITEMS = 40
#: Higher than the bench's rates. Every draw is seeded by position (the n-th submit request,
#: the n-th accepted job, the body): with seed 27 a lost submit answer, a failed job, a 404
#: output and a cut download all come within the first 8 of their kind, and 4 of the 40
#: bodies are refused, so every class shows up however the kills reorder the work.
SEED = 27
FAULTS = {"fail_5xx": 0.08, "fail_429": 0.06, "slow": 0.04, "drop": 0.04, "reset": 0.04,
          "lost_submit": 0.08, "job_fail": 0.08, "output_404": 0.08, "output_truncate": 0.1,
          "refuse": 0.08}
EVERY_FAULT = set(FAULTS)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> ChaosResult:
    config = ChaosConfig(items=ITEMS, seed=SEED, kill_every=3.0, clock_kill_every=3,
                         redis_restarts=2,
                         redis_down=1.5, workers=2, concurrency=2, max_in_flight=10,
                         duration="0.5-2", faults=FAULTS, timeout=150,
                         root=tmp_path_factory.mktemp("chaos"))
    return run_chaos(config, say=lambda _text: None)


def explain(result: ChaosResult) -> str:
    return markdown([report(result)])


def test_every_item_ends_completed_failed_or_uncertain_and_none_is_lost(
        chaos: ChaosResult) -> None:
    states = chaos.findings.states
    assert sum(states.values()) == ITEMS, explain(chaos)
    assert set(states) <= {"completed", "failed", "submit_uncertain"}, explain(chaos)
    assert chaos.findings.lost == 0 and states["completed"] > ITEMS // 2, explain(chaos)


def test_no_submission_is_paid_twice(chaos: ChaosResult) -> None:
    assert chaos.evidence.stats["duplicate_submits"] == 0
    assert chaos.findings.wrong_submissions == 0, explain(chaos)
    assert chaos.findings.orphan_jobs == 0, explain(chaos)
    accepted = chaos.evidence.stats["submits"]
    assert accepted == len(chaos.evidence.jobs) <= ITEMS


def test_every_failure_and_every_uncertain_item_is_explained(chaos: ChaosResult) -> None:
    assert chaos.findings.unexplained == 0, explain(chaos)
    assert sum(chaos.findings.uncertain.values()) == chaos.findings.states["submit_uncertain"]
    assert sum(chaos.findings.failures.values()) == chaos.findings.states["failed"]


def test_every_stored_object_matches_the_manifest(chaos: ChaosResult) -> None:
    found = chaos.findings
    assert found.objects_checked >= chaos.findings.states["completed"], explain(chaos)
    assert (found.sha_mismatches, found.missing_objects, found.stray_objects) == (0, 0, 0)
    assert found.manifest_errors == 0 and chaos.manifest_by_workers, explain(chaos)


def test_the_run_really_was_chaotic(chaos: ChaosResult) -> None:
    assert chaos.redis_restarts == 2
    assert chaos.kills_child >= 1 and chaos.kills_main >= 1, explain(chaos)
    assert chaos.kills_clock >= 1, explain(chaos)
    assert chaos.orphans == 0
    injected = {k for k, v in chaos.evidence.stats["faults"].items() if v}
    assert injected >= EVERY_FAULT, f"never injected: {EVERY_FAULT - injected}"


def test_the_clock_came_back_after_every_kill_of_its_holder(chaos: ChaosResult) -> None:
    """No beat runs: after each kill of the clock's holder another worker took the lease."""
    assert len(chaos.takeovers) == chaos.kills_clock >= 1, explain(chaos)


def test_all_checks_pass(chaos: ChaosResult) -> None:
    assert chaos.ok, explain(chaos)
