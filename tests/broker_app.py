"""A tiny Celery app for tests/test_broker.py: rcbatch's delivery settings, two tasks.

The broker URL, the transport and the queue come from the environment, so the test can run
the same app on kombu's own Redis transport and on rcbatch's (worker/broker.py).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("broker_test", broker=os.environ["BROKER_TEST_URL"])
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                worker_prefetch_multiplier=1, task_ignore_result=True,
                task_default_queue=os.environ.get("BROKER_TEST_QUEUE", "broker-test"),
                broker_transport=os.environ.get("BROKER_TEST_TRANSPORT") or None)


@app.task(name="broker_test.sleep")
def sleep(seconds: float) -> None:
    """Keep the only pool child busy."""
    time.sleep(seconds)


@app.task(name="broker_test.mark")
def mark(key: str) -> None:
    """Leave a trace in Redis, so the test sees that the task ran."""
    redis.Redis.from_url(os.environ["BROKER_TEST_URL"]).rpush(key, "ran")
