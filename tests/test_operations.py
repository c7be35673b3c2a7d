"""Operating batches with real workers: budgets, retry of failed items, sticky cancel."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.worker import keys
from rcbatch.worker.state import Store
from rcbatch.worker.wiring import redis_client
from tests.cluster import Workers, wait_finished
from tests.test_cli import T2I, rcbatch, write_rows

pytestmark = pytest.mark.e2e
TOKEN = "ops-token-71c3aa90"


def env_for(redis_url: str, sim_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"RCBATCH_REDIS_URL": redis_url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN,
            "RCBATCH_RUNCOMFY_BASE_URL": sim_url, "RCBATCH_SUBMIT_RATE": "500",
            "RCBATCH_BUCKET_URL": (tmp_path / "bucket").as_uri(), **extra}


def submit(spec: Path, env: dict[str, str], *args: str) -> str:
    done = rcbatch("submit", str(spec), "--json", "--no-preflight", *args, env=env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["batch_id"])


def stats(url: str) -> dict[str, int]:
    data: dict[str, int] = httpx.get(f"{url}/_sim/stats").json()
    return data


def test_a_budget_for_10_of_30_items_submits_exactly_10_with_4_workers(
        redis_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(token=TOKEN, concurrency=30, duration=(0.1, 0.3),
                             image_scale=0.02)
    with SimulatorServer(config) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path, RCBATCH_MAX_IN_FLIGHT="30",
                      RCBATCH_PRICES=json.dumps({T2I: 0.05}))
        with Workers(env, tmp_path, count=4, concurrency=2) as workers:
            bid = submit(write_rows(tmp_path / "b.jsonl", 30), env, "--max-cost", "0.5")
            store = Store(redis_client(redis_url))
            deadline = time.monotonic() + 60
            while store.counts(bid)["completed"] < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # room for any overshoot to show
            assert store.counts(bid)["completed"] == 10, workers.logs()
        sent = stats(sim.base_url)["submits"]
    assert sent == 10
    status = json.loads(rcbatch("status", bid, "--json", env=env).stdout)
    assert status["counts"]["pending"] == 20 and "budget reached" in status["paused"]


def test_retry_reruns_only_the_failed_items(redis_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(token=TOKEN, concurrency=10, duration=(0.1, 0.3), seed=11,
                             job_fail=0.3, image_scale=0.02)
    with SimulatorServer(config) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path)
        with Workers(env, tmp_path, count=2, concurrency=2):
            bid = submit(write_rows(tmp_path / "r.jsonl", 20), env)
            store = Store(redis_client(redis_url))
            counts = wait_finished(store, bid, 90)
            failed = counts["failed"]
            assert 0 < failed < 20 and counts["completed"] == 20 - failed
            before = {r["id"]: r.get("request_id") for r in store.iter_items(bid)
                      if r["state"] == keys.COMPLETED}
            httpx.post(f"{sim.base_url}/_sim/reset", json={"job_fail": 0.0})
            done = rcbatch("retry", bid, env=env)
            assert done.returncode == 0 and f"{failed} items queued again" in done.stdout
            counts = wait_finished(store, bid, 90)
            after = {r["id"]: r for r in store.iter_items(bid)}
        assert stats(sim.base_url)["submits"] == failed  # only the failed ones went again
    assert counts["completed"] == 20
    for iid, request_id in before.items():
        assert after[iid]["request_id"] == request_id  # completed items untouched
    retried = [r for r in after.values() if r.get("history")]
    assert len(retried) == failed
    assert all(json.loads(r["history"])[0]["error"]["kind"] == "job_failed" for r in retried)


def test_cancel_is_sticky_across_a_worker_restart(redis_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(token=TOKEN, concurrency=2, duration=(1.0, 1.5),
                             image_scale=0.02)
    with SimulatorServer(config) as sim:
        # A short grace so the reconciler re-drives the killed worker's polls quickly.
        env = env_for(redis_url, sim.base_url, tmp_path, RCBATCH_MAX_IN_FLIGHT="4",
                      RCBATCH_STEP_GRACE="5")
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=1, concurrency=2) as workers:
            bid = submit(write_rows(tmp_path / "c.jsonl", 20), env)
            while stats(sim.base_url)["submits"] < 4:
                time.sleep(0.1)
            done = rcbatch("cancel", bid, env=env)
            assert done.returncode == 0, done.stderr
            sent_at_cancel = stats(sim.base_url)["submits"]
            workers.procs[0].send_signal(signal.SIGKILL)
            workers.procs[0].wait(10)
            workers.start(0)
            counts = wait_finished(store, bid, 60)
        final = stats(sim.base_url)
    assert final["submits"] == sent_at_cancel  # nothing submitted after the cancel
    assert counts["cancelled"] >= 20 - sent_at_cancel
    assert counts["completed"] + counts["cancelled"] + counts["failed"] == 20
    assert json.loads(rcbatch("status", bid, "--json", env=env).stdout)["state"] == "cancelled"
