"""Durability under broker faults, with real parts: a Redis server process, `rcbatch worker`
processes, and the simulator over loopback HTTP.

- A countdown message held past the broker's visibility timeout is handed out twice (kombu
  #337); the copies must exit without polling or rescheduling, and countdowns stay below it.
- A worker's main process SIGKILLed mid-step gets its message back after the visibility
  timeout; a step that keeps killing its worker ends as `worker_lost`, not as a loop.
- The broker connection dropped while a submit waits for the API's answer: the submit goes
  on and its answer is recorded (Celery does not cancel it).
- Redis SIGKILLed and restarted on the same port and data: the batch finishes, nothing lost.
- A lost submit answer makes an item `submit_uncertain`; only `retry --uncertain` re-runs it.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from celery import Celery
from kombu import Connection

from rcbatch.cli.embedded_redis import EmbeddedRedis
from rcbatch.config import Settings
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.runcomfy.simulator.faults import FaultPlan
from rcbatch.worker import keys
from rcbatch.worker.celery_app import (
    QUEUE,
    RcbatchCelery,
    celery_config,
    max_countdown,
    time_limits,
)
from rcbatch.worker.runtime import Limits
from rcbatch.worker.state import Store
from rcbatch.worker.tasks import CeleryPublisher
from rcbatch.worker.wiring import redis_client
from tests.cluster import Workers, wait_finished
from tests.test_cli import rcbatch, write_rows
from tests.test_operations import TOKEN, env_for, stats, submit

pytestmark = pytest.mark.e2e
T = TypeVar("T")


# --- helpers --------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def seed_where(config: SimulatorConfig, fits: Callable[[FaultPlan], bool]) -> int:
    """The first simulator seed whose fault draws satisfy `fits` (draws are deterministic)."""
    for seed in range(20_000):
        if fits(FaultPlan(config, seed)):
            return seed
    raise AssertionError("no seed gives the wanted faults")


def raw_app(redis_url: str, visibility_timeout: float) -> Celery:
    """A plain Celery app on rcbatch's queue, without rcbatch's countdown cap: it publishes
    what a careless producer (or kombu itself, on redelivery) would."""
    probe = Celery("probe", set_as_current=False)
    probe.conf.update(celery_config(redis_url, visibility_timeout))
    return probe


def restore_overdue(redis_url: str, visibility_timeout: float) -> None:
    """Run kombu's own sweep that puts unacknowledged messages older than the visibility
    timeout back on their queue (every worker runs it at start and every few minutes)."""
    with Connection(redis_url, transport_options={"visibility_timeout": visibility_timeout}) \
            as conn:
        conn.default_channel.qos.restore_visible(num=10_000)


def broker_messages(client: Any) -> list[dict[str, Any]]:
    """Every Celery message in the queue and in the unacknowledged hash, as payloads."""
    raw = list(client.lrange(QUEUE, 0, -1))
    raw += [json.dumps(json.loads(v)[0]).encode() for v in client.hvals("unacked")]
    return [json.loads(m) for m in raw]


def current_seqs(store: Store, bid: str, n: int) -> dict[str, int] | None:
    """{item: step sequence} once all `n` items are polling their remote job, else None."""
    records = list(store.iter_items(bid))
    polling = {r["id"]: int(r["seq"]) for r in records
               if r["state"] in (keys.SUBMITTED, keys.RUNNING) and int(r["seq"]) >= 1}
    return polling if len(polling) == n else None


# --- countdowns and the visibility timeout ---------------------------------------------------


def test_the_visibility_timeout_setting_bounds_countdowns_and_time_limits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCBATCH_VISIBILITY_TIMEOUT", "3")
    assert Settings().visibility_timeout == 3.0
    low = celery_config("redis://127.0.0.1:1/0", 3.0)
    assert low["broker_transport_options"]["visibility_timeout"] == 3.0
    assert low["task_soft_time_limit"] < low["task_time_limit"] < 3.0
    assert max_countdown(3.0) <= 3.0 / 4
    default = celery_config("redis://127.0.0.1:1/0")
    assert default["broker_transport_options"]["visibility_timeout"] == 900
    assert (default["task_time_limit"], default["task_soft_time_limit"]) == (600, 570)
    assert time_limits(900)[0] < 900 and max_countdown(900) == 30


def test_a_long_countdown_is_published_capped_below_the_visibility_timeout(
        redis_client: redis.Redis, redis_url: str) -> None:
    app = RcbatchCelery("capped", set_as_current=False)
    app.conf.update(celery_config(redis_url, 3.0))
    before = time.time()
    CeleryPublisher(app).poll("b1", "i1", 7, countdown=30)
    CeleryPublisher(app).fetch("b1", "i1", 8, countdown=0.1)
    after = time.time()
    etas = {}
    for message in broker_messages(redis_client):
        headers = message["headers"]
        etas[headers["task"]] = datetime.fromisoformat(headers["eta"]).timestamp()
    cap = max_countdown(3.0)
    assert before + cap - 0.01 <= etas["rcbatch.poll"] <= after + cap + 0.01
    assert etas["rcbatch.fetch"] <= after + 0.1 + 0.01  # short countdowns are kept as they are


def test_poll_copies_held_past_the_visibility_timeout_exit_without_polling(
        redis_url: str, tmp_path: Path) -> None:
    """kombu #337, forced: copies of live polls whose countdown outlives the visibility
    timeout are restored by kombu's sweep and run twice each; plus copies with an old step
    sequence. None of them may reach the API or fork the item's poll chain."""
    vt, n = 3.0, 6
    config = SimulatorConfig(token=TOKEN, concurrency=n, duration=(5.0, 6.0), seed=3,
                             image_scale=0.02)
    broker = redis.Redis.from_url(redis_url)
    with SimulatorServer(config) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path, RCBATCH_VISIBILITY_TIMEOUT=str(vt),
                      RCBATCH_MAX_IN_FLIGHT=str(n))
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=2, concurrency=2) as workers:
            bid = submit(write_rows(tmp_path / "vt.jsonl", n), env)
            seqs = wait_for(lambda: current_seqs(store, bid, n), 60, "every item polling")
            probe = raw_app(redis_url, vt)
            held = {probe.send_task("rcbatch.poll", args=[bid, iid, seq],
                                    countdown=1.5 * vt).id for iid, seq in seqs.items()}
            for iid, seq in seqs.items():
                probe.send_task("rcbatch.poll", args=[bid, iid, seq - 1])
            probe.close()
            time.sleep(vt + 0.3)  # the held copies are now older than the visibility timeout
            restore_overdue(redis_url, vt)
            redelivered = wait_for(lambda: held <= {
                m["headers"]["id"] for m in broker_messages(broker)
                if m["headers"].get("redelivered")}, 5, "the held copies to be redelivered")
            counts = wait_finished(store, bid, 60)
            items = list(store.iter_items(bid))
        final = stats(sim.base_url)
    assert redelivered
    assert counts["completed"] == n, workers.logs()
    assert final["submits"] == n and final["duplicate_submits"] == 0
    assert all(int(r["attempts"]) == 1 for r in items)
    # One result request per recorded poll: no stale copy (2 per item) reached the API.
    assert final["result_polls"] == sum(int(r["polls"]) for r in items), workers.logs()


# --- a worker killed mid-step -----------------------------------------------------------------


def test_a_step_that_keeps_killing_its_worker_fails_the_item_as_worker_lost(
        redis_url: str, tmp_path: Path) -> None:
    """Every poll of the item hangs at the API; the test SIGKILLs the worker's main process
    each time one is under way (an OOM kill, say). The message comes back after the visibility
    timeout and is counted; past Limits.max_deliveries the item fails as worker_lost."""
    vt = 3.0  # the time limit, 2/3 of it, must not end a held poll before the test sees it
    base = SimulatorConfig(token=TOKEN, concurrency=2, duration=(0.2, 0.4), slow=0.9,
                           slow_seconds=30, image_scale=0.02)
    seed = seed_where(base, lambda plan: not plan.for_request("submit").slow and all(
        plan.for_request("result").slow for _ in range(8)))
    limit = Limits().max_deliveries
    with SimulatorServer(dataclasses.replace(base, seed=seed)) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path, RCBATCH_VISIBILITY_TIMEOUT=str(vt))
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=1, concurrency=1, beat=False) as workers:
            bid = submit(write_rows(tmp_path / "lost.jsonl", 1), env)
            iid = wait_for(lambda: store.item_ids(bid), 10, "the item")[0]
            kills = 0
            while kills <= limit:
                # Watch without pause from the restart on: the poll may come back through the
                # restarted worker's own start-up sweep or through ours, and must be killed
                # before the task's time limit (2/3 of vt) ends it and acknowledges it.
                look = partial(_held_or_ended, sim.base_url, store, bid, iid, kills,
                               lambda: restore_overdue(redis_url, vt))
                try:
                    seen = wait_for(look, 30, f"poll number {kills + 1}")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{workers.logs()}") from None
                if seen == "ended":
                    break
                workers.procs[0].send_signal(signal.SIGKILL)  # the main process only
                workers.procs[0].wait(10)
                kills += 1
                workers.start(0)
            wait_finished(store, bid, 10)
            item = store.item(bid, iid) or {}
        final = stats(sim.base_url)
    assert item["state"] == keys.FAILED, workers.logs()
    assert json.loads(item["error"])["kind"] == "worker_lost"
    assert kills == limit and int(item["deliveries"]) == limit + 1
    assert final["submits"] == 1 and final["duplicate_submits"] == 0
    assert final["result_polls"] == limit  # the last start gave up without asking the API
    status = json.loads(rcbatch("status", bid, "--json", env=env).stdout)
    assert status["state"] == "finished" and status["counts"]["failed"] == 1


def _held_or_ended(sim_url: str, store: Store, bid: str, iid: str, kills: int,
                   sweep: Callable[[], None]) -> str | None:
    """"ended" once the item is terminal; "held" once one more poll hangs at the API; else
    run `sweep` (kombu's restore of overdue messages) and None."""
    if (store.item(bid, iid) or {}).get("state") in keys.TERMINAL:
        return "ended"
    if stats(sim_url)["result_polls"] > kills:
        return "held"
    sweep()
    return None


# --- the broker connection dropped mid-task ---------------------------------------------------


def test_a_submit_under_way_when_the_broker_connection_drops_is_recorded(
        redis_url: str, tmp_path: Path) -> None:
    """The API holds the answer to the only submit for 4 s; meanwhile the worker's broker
    connection is killed (what a failover or a network blip does to it). The submit goes on
    and its answer is recorded: not cancelled between its `submitting` mark and the record of
    an accepted job, which would leave the item `submit_uncertain` and the user a paid job.
    Its message, put back on the queue as the connection dropped, may run again on the
    second pool slot while the first still waits: it sends nothing."""
    base = SimulatorConfig(token=TOKEN, concurrency=2, duration=(0.2, 0.4), slow=0.5,
                           slow_seconds=4, image_scale=0.02)
    seed = seed_where(base, lambda plan: plan.for_request("submit").slow and not any(
        plan.for_request("result").slow for _ in range(8)))
    with SimulatorServer(dataclasses.replace(base, seed=seed)) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path)
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=1, concurrency=2, beat=False):
            bid = submit(write_rows(tmp_path / "blip.jsonl", 1), env)
            wait_for(lambda: stats(sim.base_url)["submits"], 20, "the submit at the API")
            dropped = _kill_consumers(store.redis)
            counts = wait_finished(store, bid, 30)
            logs = (tmp_path / "worker-0.log").read_text(errors="replace")
        final = stats(sim.base_url)
    assert dropped and "Connection to broker lost" in logs
    assert counts["completed"] == 1, logs
    assert final["submits"] == 1 and final["duplicate_submits"] == 0


def _kill_consumers(client: redis.Redis) -> int:
    """Close every connection blocked in BRPOP (a worker's broker consumer); how many."""
    ids = [c["id"] for c in client.client_list() if c.get("cmd") in ("brpop", "blpop")]
    for cid in ids:
        client.client_kill_filter(_id=cid)
    return len(ids)


# --- Redis killed and restarted ----------------------------------------------------------------


def test_a_batch_survives_redis_killed_and_restarted_mid_batch(tmp_path: Path) -> None:
    n = 16
    config = SimulatorConfig(token=TOKEN, concurrency=8, duration=(0.8, 1.5), seed=4,
                             image_scale=0.02)
    server = EmbeddedRedis(tmp_path / "redis")  # AOF everysec, noeviction, like `rcbatch run`
    server.start()
    try:
        with SimulatorServer(config) as sim:
            env = env_for(server.url, sim.base_url, tmp_path, RCBATCH_STEP_GRACE="2",
                          RCBATCH_MAX_IN_FLIGHT=str(n))
            with Workers(env, tmp_path, count=2, concurrency=2) as workers:
                bid = submit(write_rows(tmp_path / "crash.jsonl", n), env)
                # Every submission is recorded (a submit cut off by the crash would rightly
                # end submit_uncertain) and some items are done: polls, fetches and held
                # countdown messages are all in flight when Redis dies.
                store = Store(redis_client(server.url))
                before = wait_for(lambda: _submitted_and_some_done(store, bid, 4), 60,
                                  "every item submitted and some completed")
                server.kill()
                time.sleep(0.5)
                server.start()  # same port, same data folder (append-only file)
                store = Store(redis_client(server.url))
                counts = wait_finished(store, bid, 90)
                items = list(store.iter_items(bid))
                alive = [p.poll() is None for p in workers.procs]
            final = stats(sim.base_url)
    finally:
        server.stop()
    assert before["completed"] + before["failed"] < n  # the crash came mid-batch
    assert counts["completed"] == n, workers.logs()
    assert all(alive), "a worker exited on the Redis restart"
    assert len(items) == n and all(r["state"] == keys.COMPLETED and r.get("outputs")
                                   for r in items)
    assert final["submits"] == n and final["duplicate_submits"] == 0
    assert all(int(r["attempts"]) == 1 for r in items)


def _submitted_and_some_done(store: Store, bid: str, done: int) -> dict[str, int] | None:
    counts = store.counts(bid)
    return counts if counts["pending"] == 0 and counts["completed"] >= done else None


# --- submit_uncertain and retry --uncertain ------------------------------------------------------


def test_only_retry_uncertain_reruns_items_whose_submit_answer_was_lost(
        redis_url: str, tmp_path: Path) -> None:
    n = 10
    base = SimulatorConfig(token=TOKEN, concurrency=n, duration=(0.2, 0.4), lost_submit=0.3,
                           image_scale=0.02)

    def fits(plan: FaultPlan) -> bool:
        lost = sum(plan.for_request("submit").lost_submit for _ in range(n))
        again = [plan.for_request("submit").lost_submit for _ in range(lost)]
        return 2 <= lost <= 4 and not any(again)

    seed = seed_where(base, fits)
    with SimulatorServer(dataclasses.replace(base, seed=seed)) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path)
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=1, concurrency=2) as workers:
            bid = submit(write_rows(tmp_path / "unsure.jsonl", n), env)
            counts = wait_finished(store, bid, 60)
            lost = stats(sim.base_url)["lost_submits"]
            uncertain = {r["id"] for r in store.iter_items(bid)
                         if r["state"] == keys.SUBMIT_UNCERTAIN}
            assert 2 <= lost == len(uncertain) == counts["submit_uncertain"], workers.logs()
            assert counts["completed"] == n - lost
            status = json.loads(rcbatch("status", bid, "--json", env=env).stdout)
            assert status["state"] == "finished"
            assert status["counts"]["submit_uncertain"] == lost
            assert _manifest_states(bid, env) == {
                iid: ("submit_uncertain" if iid in uncertain else "completed")
                for iid in store.item_ids(bid)}

            plain = rcbatch("retry", bid, env=env)
            assert plain.returncode == 0 and "0 items queued again" in plain.stdout
            assert store.counts(bid)["submit_uncertain"] == lost

            again = rcbatch("retry", bid, "--uncertain", env=env)
            assert again.returncode == 0 and f"{lost} items queued again" in again.stdout
            counts = wait_finished(store, bid, 60)
            items = {r["id"]: r for r in store.iter_items(bid)}
        final = stats(sim.base_url)
    assert counts["completed"] == n
    # Exactly the uncertain items went again, and each of them twice reached the API: their
    # first submit had been accepted before its answer was lost (the price of --uncertain).
    assert final["submits"] == n + lost and final["duplicate_submits"] == lost
    rerun = {iid for iid, r in items.items() if r.get("history")}
    assert rerun == uncertain
    for iid in rerun:
        assert json.loads(items[iid]["history"])[0]["error"]["kind"] == "submit_uncertain"


def _manifest_states(bid: str, env: dict[str, str]) -> dict[str, str]:
    done = rcbatch("manifest", bid, env=env)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().removeprefix("file://"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for line in lines:
        if line["status"] == "submit_uncertain":
            assert line["error"]["kind"] == "submit_uncertain"
    return {line["item_id"]: line["status"] for line in lines}
