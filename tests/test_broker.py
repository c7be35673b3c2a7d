"""The broker transport (worker/broker.py), with a real Redis and a real Celery worker.

A worker whose only slot runs a task that came from a countdown must sit idle in its main
process (kombu's own transport spins at a full core there) and must still run what was sent
meanwhile, once the slot frees. A channel keeps one client while its pool lasts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis
from celery import Celery

from bench.harness import process_cpu
from rcbatch.lifetime import die_with_parent
from rcbatch.worker import broker
from rcbatch.worker.celery_app import celery_config

TESTS = Path(__file__).resolve().parent
#: how long the countdown task keeps the slot busy, and the window measured inside it
BUSY, WINDOW = 4.0, 2.0
#: a spinning main process uses ~1.0 core; an idle one ~0.0
SPINNING = 0.5
QUEUE = "broker-test"


def _env(url: str, transport: str) -> dict[str, str]:
    return {"BROKER_TEST_URL": url, "BROKER_TEST_TRANSPORT": transport,
            "BROKER_TEST_QUEUE": QUEUE}


@pytest.fixture
def worker(redis_url: str, request: pytest.FixtureRequest,
           tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One real Celery worker with one pool child on the transport the test names."""
    env = {**os.environ, **_env(redis_url, request.param),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "broker_app", "worker",
                             "-c", "1", "--without-gossip", "--without-mingle",
                             "--without-heartbeat", "-l", "warning"],
                            env=env, stdout=log, stderr=log, cwd=TESTS,
                            preexec_fn=die_with_parent())
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _main_process_share_during_countdown_task(url: str, worker_pid: int) -> float:
    """Run one countdown task, send another meanwhile; the main process's CPU share."""
    client = Celery("broker_test_client", broker=url)
    client.conf.task_default_queue = QUEUE
    try:
        _wait_ready(client, url)
        client.send_task("broker_test.sleep", (BUSY,), countdown=0.5)
        time.sleep(1.0)  # due and running by now
        client.send_task("broker_test.mark", ("after",))
        before = process_cpu(worker_pid, children=False)
        time.sleep(WINDOW)
        return (process_cpu(worker_pid, children=False) - before) / WINDOW
    finally:
        client.close()


def _wait_ready(client: Celery, url: str) -> None:
    client.send_task("broker_test.mark", ("ready",))
    _wait_for_list(url, "ready", "the test worker never ran a task")


def _wait_for_list(url: str, key: str, why: str) -> None:
    db, deadline = redis.Redis.from_url(url), time.monotonic() + 30
    try:
        while not db.llen(key):
            assert time.monotonic() < deadline, why
            time.sleep(0.05)
    finally:
        db.close()


@pytest.mark.parametrize("worker", [broker.TRANSPORT], indirect=True)
def test_worker_main_process_idles_while_a_countdown_task_runs(
        redis_url: str, worker: subprocess.Popen[bytes]) -> None:
    share = _main_process_share_during_countdown_task(redis_url, worker.pid)
    assert share < SPINNING, f"the worker's main process used {share:.0%} of a core"
    _wait_for_list(redis_url, "after", "the task sent during the busy slot never ran")


@pytest.mark.parametrize("worker", [""], indirect=True)
def test_kombus_own_transport_still_spins_there(redis_url: str,
                                                worker: subprocess.Popen[bytes]) -> None:
    # Why worker/broker.py exists: if this starts failing, kombu has fixed it and the
    # override can go.
    share = _main_process_share_during_countdown_task(redis_url, worker.pid)
    assert share > SPINNING, f"kombu's transport now idles ({share:.0%} of a core)"


def test_rcbatch_uses_the_transport_for_redis_urls_only() -> None:
    assert celery_config("redis://127.0.0.1:6379/0")["broker_transport"] == broker.TRANSPORT
    assert celery_config("rediss://example.com:6380/0")["broker_transport"] == broker.TRANSPORT
    sentinel = celery_config("sentinel://127.0.0.1:26379/mymaster")  # tests/test_sentinel.py
    assert sentinel["broker_transport"] == broker.SENTINEL_TRANSPORT
    assert "broker_transport" not in celery_config("memory://")


def test_a_channel_reuses_its_client_until_its_pool_is_replaced(redis_url: str) -> None:
    connection = kombu.Connection(redis_url, transport=broker.Transport)
    try:
        channel = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again and first.ping()
        channel._disconnect_pools()  # what kombu does after a fork
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first and fresh.connection_pool is channel.pool
            assert fresh.ping()
        channel.close()
    finally:
        connection.release()
