"""Operating a batch by hand, as a person does it: the installed `rcbatch` command in
subprocesses, the embedded Redis, real workers, the simulator over HTTP. Each test asserts
what that person checks: exit codes, the line on stderr, `status --json`, the simulator's
stats, and the manifest's verified outputs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.journeys import (
    TOKEN,
    Shell,
    free_port,
    rows,
    simulator,
    stats,
    survivors,
    verified_outputs,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    return Shell(home, cwd, {"RCBATCH_SUBMIT_RATE": "200"})


def _api(shell: Shell, url: str) -> None:
    shell.env.update({"RCBATCH_RUNCOMFY_BASE_URL": url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN})


def test_cancel_during_run_follows_paid_jobs_to_their_end_and_stores_them(shell: Shell) -> None:
    spec = shell.write("cancel.jsonl", rows(24))
    with simulator(shell, "--concurrency", "4", "--duration", "4-6", "--seed", "3",
                   "--image-scale", "0.05") as url:
        _api(shell, url)
        run = shell.start("run", str(spec), "--name", "to-cancel", "--no-preflight")
        wait_until(lambda: stats(url)["in_progress"] == 4 and stats(url)["in_queue"] >= 2,
                   60, "four jobs running and more queued at the API")
        cancel = shell.run("cancel", "to-cancel")
        assert cancel.returncode == 0, cancel.stderr
        _, err = run.communicate(timeout=120)
        after = stats(url)
    assert run.returncode == 1, err
    assert "batch cancelled:" in err and "completed after the cancel" in err
    assert after["in_queue"] == 0 and after["in_progress"] == 0, after
    assert after["cancelled"] >= 1 and after["duplicate_submits"] == 0
    doc = shell.status("to-cancel")
    assert doc["state"] == "cancelled"
    counts = doc["counts"]
    assert counts["pending"] == counts["submitted"] == counts["running"] == 0, counts
    stored = verified_outputs(doc["manifest"])
    assert stored.get("completed", 0) == after["completed"] == counts["completed"]


def test_a_budget_stops_new_submissions_keeps_paid_jobs_and_a_higher_one_continues(
        shell: Shell) -> None:
    spec = shell.write("budget.jsonl", rows(10))
    with simulator(shell, "--concurrency", "4", "--duration", "0.5-1", "--seed", "4",
                   "--image-scale", "0.05") as url:
        _api(shell, url)
        first = shell.run("run", str(spec), "--name", "capped", "--no-preflight",
                          "--max-cost", "0.1")
        held = shell.status("capped")["counts"]
        paid = stats(url)
        assert first.returncode == 1, first.stderr
        assert "budget reached" in first.stderr and "items held" in first.stderr
        assert paid["in_queue"] == paid["in_progress"] == 0
        assert held["completed"] == paid["submits"] == paid["completed"] > 0
        assert held["failed"] == held["submit_uncertain"] == 0
        assert held["pending"] == 10 - held["completed"]

        second = shell.run("run", str(spec), "--name", "capped", "--no-preflight",
                           "--max-cost", "100")
        final = stats(url)
    assert second.returncode == 0, second.stderr
    assert final["submits"] == 10 and final["duplicate_submits"] == 0
    doc = shell.status("capped")
    assert doc["counts"]["completed"] == 10
    assert verified_outputs(doc["manifest"]) == {"completed": 10}


def test_ctrl_c_then_the_same_command_finishes_the_batch_under_simulate(shell: Shell) -> None:
    spec = shell.write("resume.jsonl", rows(12))
    argv = ("run", str(spec), "--simulate", "--simulate-args",
            "--concurrency 4 --duration 3-4 --image-scale 0.05", "--name", "resumed")
    first = shell.start(*argv)

    def jobs_in_flight() -> bool:
        assert first.poll() is None, first.communicate()[1]
        return _counted(shell, "resumed", "submitted", "running") >= 2

    wait_until(jobs_in_flight, 180, "jobs at the simulator")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "Resume with the same command" in err
    assert survivors(shell.home) == []

    second = shell.run(*argv)
    assert second.returncode == 0, second.stderr
    doc = shell.status("resumed")
    assert doc["counts"]["completed"] == 12, doc
    assert verified_outputs(doc["manifest"]) == {"completed": 12}


def _counted(shell: Shell, batch: str, *states: str) -> int:
    done = shell.run("status", batch, "--json", timeout=60)
    if done.returncode != 0:
        return 0
    counts = json.loads(done.stdout)["counts"]
    return sum(counts[s] for s in states)


def test_status_ls_and_retry_work_from_any_folder_and_retry_says_when_nothing_runs(
        shell: Shell, tmp_path: Path) -> None:
    spec = shell.write("any.jsonl", rows(3))
    done = shell.run("run", str(spec), "--simulate", "--name", "anywhere",
                     "--simulate-args", "--duration 0.2-0.4 --image-scale 0.05")
    assert done.returncode == 0, done.stderr
    assert "outputs go to" in done.stderr
    assert survivors(shell.home) == [], "run returned while processes it started still ran"

    elsewhere = Shell(shell.home, tmp_path, shell.env)
    assert elsewhere.status("anywhere")["counts"]["completed"] == 3
    listed = json.loads(elsewhere.run("ls", "--json").stdout)
    assert [(b["name"], b["state"], b["total"]) for b in listed] == [("anywhere", "finished", 3)]
    assert not (tmp_path / ".rcbatch").exists()

    retried = elsewhere.run("retry", "anywhere", "--all-failed", "--uncertain")
    assert retried.returncode == 0 and "0 items queued again" in retried.stdout


def test_an_unreachable_api_pauses_the_batch_exits_3_and_the_same_command_continues(
        shell: Shell) -> None:
    spec = shell.write("outage.jsonl", rows(6))
    port = free_port()
    _api(shell, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    down = shell.run("run", str(spec), "--name", "outage", "--no-preflight", timeout=240)
    assert down.returncode == 3, down.stderr
    assert time.monotonic() - started < 120
    assert f"127.0.0.1:{port}" in down.stderr and "none failed" in down.stderr
    counts = shell.status("outage")["counts"]
    assert counts["failed"] == counts["submit_uncertain"] == 0, counts

    with simulator(shell, "--duration", "0.2-0.5", "--image-scale", "0.05", port=port) as url:
        back = shell.run("run", str(spec), "--name", "outage", "--no-preflight")
        final = stats(url)
    assert back.returncode == 0, back.stderr
    assert final["submits"] == 6 and final["duplicate_submits"] == 0
    doc = shell.status("outage")
    assert verified_outputs(doc["manifest"]) == {"completed": 6}


def test_retry_after_run_has_exited_says_nothing_runs_then_wait_runs_it(shell: Shell) -> None:
    spec = shell.write("retry.jsonl", rows(4))
    port = free_port()
    with simulator(shell, "--duration", "0.2-0.4", "--image-scale", "0.05", "--job-fail", "1",
                   port=port) as url:
        _api(shell, url)
        failed = shell.run("run", str(spec), "--name", "again", "--no-preflight")
    assert failed.returncode == 1, failed.stderr
    assert "rcbatch retry again" in failed.stderr
    assert shell.status("again")["counts"]["failed"] == 4

    with simulator(shell, "--duration", "0.2-0.4", "--image-scale", "0.05", port=port) as url:
        queued = shell.run("retry", "again")
        assert queued.returncode == 0, queued.stderr
        assert "4 items queued again" in queued.stdout
        assert "no worker is serving this Redis" in queued.stderr
        assert "rcbatch retry again --wait" in queued.stderr
        waited = shell.run("retry", "again", "--wait")
        final = stats(url)
    assert waited.returncode == 0, waited.stderr
    assert final["submits"] == 4 and final["duplicate_submits"] == 0
    doc = shell.status("again")
    assert verified_outputs(doc["manifest"]) == {"completed": 4}


def test_a_sweep_with_a_whole_wave_queued_at_the_api_is_asked_about_under_3_times_a_job(
        shell: Shell) -> None:
    # the README's advice for sweeps of equal jobs: MAX_IN_FLIGHT at twice the account's
    # concurrency, so a whole wave waits in the API's queue. Those jobs' durations from
    # submission spread over a job's time; their refill times do not (worker/pacing.py)
    n = 60  # ten waves
    spec = shell.write("sweep.jsonl", rows(n))
    with simulator(shell, "--concurrency", "6", "--duration", "2-2",
                   "--image-scale", "0.05") as url:
        _api(shell, url)
        run = shell.run("run", str(spec), "--name", "waves", "--no-preflight",
                        RCBATCH_MAX_IN_FLIGHT="12")
        after = stats(url)
    assert run.returncode == 0, run.stderr
    assert after["completed"] == after["submits"] == n and after["duplicate_submits"] == 0
    assert after["peak_in_progress"] == 6  # the API's slots were full, never over
    polls = after["result_polls"] + after["status_polls"]
    print(f"{polls} polls for {n} jobs")
    assert polls <= 3 * n, after  # the bar: at most 3 per job
    doc = shell.status("waves")
    assert doc["counts"]["completed"] == n
    assert verified_outputs(doc["manifest"]).get("completed", 0) == n
