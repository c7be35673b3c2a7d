"""Peer (a): the naive Celery way, one task per job that submits and then sleeps in a poll loop.

Like RunComfy's own CLI, the task polls /status every 2 s, then fetches /result and downloads
the outputs. Each job holds a worker slot for its whole life, so jobs in flight = worker slots.
Its own Celery app ("naive") on database 1 of the bench Redis; the token and API URL come from
the environment (RCBATCH_RUNCOMFY_API_TOKEN, NAIVE_BASE_URL, NAIVE_BROKER_URL).

`python -m bench.naive_celery [celery worker options]` runs a worker of it; `run_peer` starts
workers, publishes one task per job and waits for every job to be stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
from celery import Celery

from bench.asyncio_poller import output_urls

if TYPE_CHECKING:
    from bench.harness import Services
    from bench.pipeline import Outcome
    from rcbatch.producer.spec import ItemSpec

POLL_SECONDS = 2.0
QUEUE = "naive"
DONE = "naive:done"

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                task_default_queue=QUEUE, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
_client: httpx.Client | None = None


def client() -> httpx.Client:
    """This process's HTTP client (created after the pool forks)."""
    global _client
    if _client is None:
        token = os.environ.get("RCBATCH_RUNCOMFY_API_TOKEN", "")
        _client = httpx.Client(base_url=os.environ.get("NAIVE_BASE_URL", ""), timeout=60,
                               headers={"Authorization": f"Bearer {token}"})
    return _client


@app.task(name="naive.job")
def job(model: str, body: dict[str, Any], key: str, out_dir: str) -> None:
    """Submit, sleep-poll /status every 2 s, read /result, download: one job, one slot."""
    http = client()
    rid = http.post(f"/v1/models/{model}", json=body).raise_for_status().json()["request_id"]
    polls = 0
    while True:
        time.sleep(POLL_SECONDS)
        status = http.get(f"/v1/requests/{rid}/status").raise_for_status().json()["status"]
        polls += 1
        if status in ("completed", "cancelled", "failed"):
            break
    result = http.get(f"/v1/requests/{rid}/result").raise_for_status().json()
    polls += 1
    folder = Path(out_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    for n, url in enumerate(output_urls(result.get("output"))):
        data = http.get(url).raise_for_status().content
        (folder / f"{n}.{url.rsplit('.', 1)[-1]}").write_bytes(data)
    record = {"model": model, "stored": time.time(), "polls": polls}
    redis.Redis.from_url(app.conf.broker_url).hset(DONE, rid, json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    """Run a Celery worker of the naive app (CELERY_ARGS as for `celery worker`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    app.worker_main(["worker", "--queues", QUEUE, "--loglevel", "WARNING", *args])
    return 0


def run_peer(svc: Services, specs: Sequence[ItemSpec], *, cap: int, workers: int,
             concurrency: int, timeout: float) -> Outcome:
    """Run the specs through `workers` x `concurrency` naive slots (the simulator already
    reset); workers are started before the clock starts and stopped after."""
    from bench.harness import TOKEN, group_cpu
    from bench.pipeline import Stored, outcome_of

    broker = svc.redis_url.rsplit("/", 1)[0] + "/1"
    db: Any = redis.Redis.from_url(broker)
    db.flushdb()
    env = {**os.environ, "NAIVE_BROKER_URL": broker, "NAIVE_BASE_URL": svc.sim.base_url,
           "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN}
    procs = [_start(env, svc.folder("naive-logs") / f"worker-{n}.log", n, concurrency)
             for n in range(workers)]
    try:
        _wait_ready(broker, workers)
        out = str(svc.folder("naive-out"))
        cpu0, started = group_cpu([p.pid for p in procs]), time.time()
        for spec in specs:
            job.apply_async((spec.model, spec.input, spec.item_id, out), queue=QUEUE)
        _wait_done(db, len(specs), timeout)
        cpu = group_cpu([p.pid for p in procs]) - cpu0
    finally:
        for proc in procs:
            _stop(proc)
    done = [Stored(rid.decode(), (r := json.loads(v))["model"], r["stored"], r["polls"])
            for rid, v in db.hgetall(DONE).items()]
    db.close()
    return outcome_of(svc, done, started=started, cap=cap, cpu=cpu)


def _start(env: dict[str, str], log_path: Path, n: int,
           concurrency: int) -> subprocess.Popen[bytes]:
    from rcbatch.lifetime import die_with_parent

    argv = [sys.executable, "-m", "bench.naive_celery", "--concurrency", str(concurrency),
            "--hostname", f"naive{n}-{os.getpid()}@%h", "--without-gossip",
            "--without-mingle"]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                preexec_fn=die_with_parent(), start_new_session=True)


def _wait_ready(broker: str, workers: int, timeout: float = 60.0) -> None:
    from bench.harness import forget_broker

    forget_broker(app)
    app.conf.broker_url = broker
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= workers:
            return
    raise RuntimeError("naive Celery workers did not answer a ping")


def _wait_done(db: Any, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(db.hlen(DONE)) >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"naive Celery: {db.hlen(DONE)} of {n} stored after {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
