"""Every worker can be the clock: two real `rcbatch worker` processes and no beat.

One of them holds the clock lease (`keys.CLOCK`) and sends the reconciler's nudges. It is
SIGKILLed (main process and pool) while an item's planned poll is deliberately lost; the
other worker must take the lease within CLOCK_LEASE + CLOCK_TICK seconds (8 s; the wait
allows 3 s more for a late tick on a busy machine) and its reconciler must re-drive the item,
which then completes. The killed worker, started again, does not take the clock back; when
the holder is stopped warmly it releases the lease and the other takes it at its next tick.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import cast

import pytest
import redis

from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.worker import keys
from rcbatch.worker.celery_app import CLOCK_LEASE, CLOCK_TICK, RECONCILE_EVERY
from rcbatch.worker.state import Store
from rcbatch.worker.wiring import redis_client
from tests.cluster import Workers, wait_finished
from tests.test_cli import T2I, write_rows
from tests.test_durability import wait_for
from tests.test_operations import TOKEN, env_for, stats, submit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: the model's jobs are known to take about this long, so the item's first poll is planned
#: this far ahead and nothing else touches it until then (no cold-start wake-ups)
JOB_SECONDS = 4.0
GRACE = 1.0
#: the bound on a takeover: the lease runs out, the survivor's next tick takes it; the slack
#: covers a tick that starts late on a busy 2-core machine
TAKEOVER_BOUND = CLOCK_LEASE + CLOCK_TICK + 3.0


def clock_holder(client: redis.Redis, workers: Workers,
                 not_: int | None = None) -> tuple[int] | None:
    """(index,) of the live worker that holds the clock lease now (the token names its pid),
    unless there is none or it is worker `not_`."""
    token = cast(bytes | None, client.get(keys.CLOCK))
    if token is None:
        return None
    pid = int(token.decode().split(":")[-2])
    found = [n for n, p in enumerate(workers.procs)
             if p.pid == pid and p.poll() is None and n != not_]
    return (found[0],) if found else None


def planned_polls(client: redis.Redis, bid: str, iid: str) -> list[bytes]:
    member = keys.member(bid, iid).encode()
    planned = cast(list[bytes], client.zrange(keys.POLLS, 0, -1))
    return [m for m in planned if m.endswith(b" " + member)]


def clock_started(log_path: Path, times: int) -> bool:
    """Whether the worker logging to `log_path` has started its clock `times` times."""
    return log_path.is_file() and log_path.read_text(errors="replace").count(
        '"clock_started"') >= times


def test_the_clock_moves_to_the_other_worker_when_its_holder_is_killed_and_reconciles(
        redis_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(token=TOKEN, concurrency=2, duration=(JOB_SECONDS - 0.5,
                                                                   JOB_SECONDS - 0.2),
                             seed=5, image_scale=0.02)
    client = redis.Redis.from_url(redis_url)
    client.lpush(keys.durations(T2I), f"{JOB_SECONDS:.3f}")
    with SimulatorServer(config) as sim:
        env = env_for(redis_url, sim.base_url, tmp_path, RCBATCH_STEP_GRACE=str(GRACE))
        store = Store(redis_client(redis_url))
        with Workers(env, tmp_path, count=2, concurrency=1, beat=False) as workers:
            bid = submit(write_rows(tmp_path / "one.jsonl", 1), env)
            (holder,) = wait_for(lambda: clock_holder(client, workers), 30, "a clock holder")
            iid = wait_for(lambda: store.item_ids(bid), 10, "the item")[0]
            lost = wait_for(lambda: planned_polls(client, bid, iid), 10, "its first poll")
            os.killpg(workers.procs[holder].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            workers.procs[holder].wait(10)
            client.zrem(keys.POLLS, *lost)  # the poll's message is lost with nobody to run it
            (survivor,) = wait_for(lambda: clock_holder(client, workers), TAKEOVER_BOUND,
                                   "the surviving worker to take the clock")
            took = time.monotonic() - killed_at
            workers.start(holder)  # as a supervisor would; it must not take the clock back
            redriven = wait_for(
                lambda: int((store.item(bid, iid) or {}).get("redrives") or 0),
                JOB_SECONDS + GRACE + TAKEOVER_BOUND + RECONCILE_EVERY + 5,
                "the reconciler to re-drive the item whose poll was lost")
            counts = wait_finished(store, bid, 30)
            item = store.item(bid, iid) or {}
            # A warm shutdown gives the lease up at once: the restarted worker takes it at
            # its next tick, without waiting for the lease to run out.
            wait_for(lambda: clock_started(tmp_path / f"worker-{holder}.log", 2), 30,
                     "the restarted worker's clock")
            still = clock_holder(client, workers)
            workers.procs[survivor].send_signal(signal.SIGTERM)
            (after_stop,) = wait_for(lambda: clock_holder(client, workers, not_=survivor),
                                     CLOCK_TICK + 3, "the restarted worker to take the clock")
        final = stats(sim.base_url)
    print(f"clock takeover after the holder's SIGKILL: {took:.1f} s")
    assert survivor != holder and redriven >= 1, workers.logs()
    assert counts["completed"] == 1 and item["state"] == keys.COMPLETED, workers.logs()
    assert final["submits"] == 1 and final["duplicate_submits"] == 0
    assert still == (survivor,) and after_stop == holder, workers.logs()
