"""The Celery application and every setting that makes delivery at-least-once and safe.

Celery messages are only nudges (the state in Redis decides what a task may do), but each
setting below still matters; they are explained here, in one place:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its
  task ran, and a pool child killed mid-task (OOM, SIGKILL) gives its message back instead
  of losing it (measured: without the second, the task was acked and never re-run).
- ``worker_prefetch_multiplier = 1``: a worker holds one message per free slot, so a crash
  strands little. (Countdown messages are held separately until due: ~9 KB each.)
- ``visibility_timeout = 900`` s: an unacknowledged message comes back after this. It is
  above the longest countdown (pacing.MAX_POLL_DELAY = 30 s; backoff caps at 30 s) and above
  the hard time limit (600 s), so no healthy task is ever delivered twice because of it
  (kombu #337: a countdown longer than it runs once per timeout that passes).
- ``task_time_limit = 600`` / ``task_soft_time_limit = 570``: no task outlives the visibility
  timeout; a stuck download is killed and its step retried.
- ``socket_timeout``, ``socket_keepalive``, ``health_check_interval``: a silently dropped
  broker connection is noticed in seconds instead of stalling the worker for good (measured:
  recovery in 18 s with 10 s / 10 s); ``worker_cancel_long_running_tasks_on_connection_loss``
  cancels tasks whose connection was lost, as their messages will come back.
- ``broker_connection_retry_on_startup`` / ``max_retries=None``: a worker started before
  Redis, or across a Redis restart, keeps trying instead of exiting.
- No result backend: tasks report through the item records in Redis, not through Celery.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

VISIBILITY_TIMEOUT = 900
TASK_TIME_LIMIT = 600
QUEUE = "rcbatch"
RECONCILE_EVERY = 5.0

app = Celery("rcbatch", include=["worker.tasks", "worker.schedule_tasks"])


def celery_config(redis_url: str) -> dict[str, Any]:
    """The Celery settings for a broker at `redis_url` (see the module docstring)."""
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "socket_timeout": 10,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    return {
        "broker_url": redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 30,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_pool_limit": 4,
        "beat_schedule": {
            "reconcile": {"task": "rcbatch.reconcile",
                          "schedule": timedelta(seconds=RECONCILE_EVERY)},
            "schedules": {"task": "rcbatch.schedules", "schedule": timedelta(seconds=30)},
        },
    }


def configure(settings: Any) -> Celery:
    """Point the app at the settings' Redis and remember the settings for the workers."""
    if not settings.redis_url:
        raise ValueError("configure() needs settings with a redis_url")
    app.conf.update(celery_config(settings.redis_url))
    app.conf.rcbatch_settings = settings
    return app
