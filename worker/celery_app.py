"""The Celery application and every setting that makes delivery at-least-once and safe.

Celery messages are only nudges (the state in Redis decides what a task may do), but each
setting below still matters; they are explained here, in one place:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its
  task ran, and a pool child killed mid-task (OOM, SIGKILL) gives its message back instead
  of losing it (measured: without the second, the task was acked and never re-run).
- ``worker_prefetch_multiplier = 1``: a worker holds one message per free slot, so a crash
  strands little. (Countdown messages are held separately until due: ~9 KB each.)
- ``visibility_timeout`` (setting ``RCBATCH_VISIBILITY_TIMEOUT``, default 900 s): an
  unacknowledged message comes back after this. Every countdown sent through this app is
  capped at `max_countdown` (a quarter of it, and never over pacing.MAX_POLL_DELAY = 30 s),
  because a countdown message is held unacknowledged by a worker until it is due and runs
  once more per timeout that passes (kombu #337). The cap sits in `RcbatchCelery.send_task`,
  the one door every nudge goes through, so it holds for polls, rounds of polls, fetch
  retries, submit deferrals and backoffs alike, whatever a step computed. Duplicates that
  still happen (a busy worker holding a due message too long) are stale by the item's step
  sequence and exit without doing anything (worker/polling.py).
- ``task_time_limit`` / ``task_soft_time_limit`` (600 / 570 s by default, `time_limits`): no
  task outlives the visibility timeout (at most two thirds of it), so a task is never handed
  to a second worker while it still runs; a stuck download is killed and its step retried.
- ``socket_timeout``, ``socket_keepalive``, ``health_check_interval``: a silently dropped
  broker connection is noticed in seconds instead of stalling the worker for good (measured:
  recovery in 18 s with 10 s / 10 s).
- ``worker_cancel_long_running_tasks_on_connection_loss = False``: a task running when the
  broker connection drops (a Sentinel failover, a Redis restart) goes on. Its state goes
  through its own client, which waits out a failover (worker/connection.py). Its message,
  which kombu puts back on the queue as the connection drops (or the visibility timeout
  does), is a copy that exits at its step's guard, even while the first still runs (a copy
  of a submit finds the item `submitting`; one of a poll, at worst, asks the API once more).
  Cancelling the task instead killed a submit between its `submitting` mark and the record
  of the API's answer: the item ended `submit_uncertain` after a 2 s failover (seen in
  tests/test_sentinel.py), when the job may well have been accepted. Celery prints a
  CPendingDeprecationWarning at each connection loss about its default changing in 6.0.
- ``broker_connection_retry_on_startup`` / ``max_retries=None``: a worker started before
  Redis, or across a Redis restart, keeps trying instead of exiting.
- ``broker_use_ssl`` for a ``rediss://`` URL: kombu falls back to *not* verifying the
  server's certificate for a bare ``rediss://`` URL (it only logs a warning); rcbatch asks
  for a verified certificate instead, as redis-py does for the state connection. An explicit
  ``?ssl_cert_reqs=...`` (or ``ssl_ca_certs=...``) in the URL still wins.
- ``broker_transport``: kombu's Redis transport with two changes (worker/broker.py): without
  the first, a worker's main process spins at a full core while a task that came from a
  countdown runs; the second reuses one redis-py client per channel for publishes and acks.
- A Sentinel set (``sentinel://h1:p1,h2:p2/MASTER[/DB]``, worker/connection.py) becomes
  kombu's form: one ``sentinel://`` URL per sentinel joined by ``;`` and the master's name
  in ``broker_transport_options["master_name"]``, served by the Sentinel variant of the same
  transport (``broker.SentinelTransport``); the connections ask the sentinels where the master
  is, so a worker whose broker connection a failover broke reconnects to the new master.
- No result backend: tasks report through the item records in Redis, not through Celery.
- No beat needed: every worker runs a clock thread (worker/tasks.py, worker/lease.py) that
  competes for one lease in Redis; the holder sends ``rcbatch.reconcile`` every
  `RECONCILE_EVERY` s and ``rcbatch.schedules`` every `SCHEDULES_EVERY` s, and when it dies
  another worker takes the lease within `CLOCK_LEASE` + `CLOCK_TICK` s. ``beat_schedule``
  stays for anyone who runs ``celery beat`` anyway: both tasks are safe to run twice (item
  steps are guarded by their sequence, each schedule firing by its run key).
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery

from rcbatch.worker import broker
from rcbatch.worker.connection import is_sentinel_url, kombu_broker, parse_sentinel_url
from rcbatch.worker.pacing import MAX_POLL_DELAY

VISIBILITY_TIMEOUT = 900.0
TASK_TIME_LIMIT = 600.0
#: the longest countdown, as a share of the visibility timeout
COUNTDOWN_SHARE = 0.25
#: the longest a task may run, as a share of the visibility timeout
TIME_LIMIT_SHARE = 2 / 3
QUEUE = "rcbatch"
RECONCILE_EVERY = 5.0
SCHEDULES_EVERY = 30.0
#: seconds between two ticks of a worker's clock (renew or try to take the lease)
CLOCK_TICK = 2.0
#: the clock lease's time to live: three ticks, so one slow tick does not lose it
CLOCK_LEASE = 3 * CLOCK_TICK


def max_countdown(visibility_timeout: float) -> float:
    """The longest countdown sent: well below the visibility timeout (kombu #337)."""
    return min(MAX_POLL_DELAY, visibility_timeout * COUNTDOWN_SHARE)


def time_limits(visibility_timeout: float) -> tuple[float, float]:
    """(hard, soft) task time limits, both below the visibility timeout."""
    hard = min(TASK_TIME_LIMIT, visibility_timeout * TIME_LIMIT_SHARE)
    return hard, max(hard - 30, hard * 0.9)


class RcbatchCelery(Celery):
    """Celery whose every countdown (or eta) is capped below the visibility timeout."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  countdown: float | None = None, eta: datetime | None = None,
                  **options: Any) -> Any:
        """Publish a task, with its countdown capped at `max_countdown` (see the module)."""
        if eta is not None:
            aware = eta if eta.tzinfo else eta.replace(tzinfo=UTC)  # Celery's naive = UTC
            countdown, eta = max(0.0, (aware - datetime.now(UTC)).total_seconds()), None
        if countdown is not None:
            countdown = min(countdown, self.max_countdown())
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)

    def max_countdown(self) -> float:
        """The cap for this app's broker settings."""
        transport = self.conf.broker_transport_options or {}
        return max_countdown(float(transport.get("visibility_timeout", VISIBILITY_TIMEOUT)))


app = RcbatchCelery("rcbatch", include=["rcbatch.worker.tasks", "rcbatch.worker.schedule_tasks"])


def celery_config(redis_url: str,
                  visibility_timeout: float = VISIBILITY_TIMEOUT) -> dict[str, Any]:
    """The Celery settings for a broker at `redis_url` (see the module docstring)."""
    hard_limit, soft_limit = time_limits(visibility_timeout)
    transport = {
        "visibility_timeout": visibility_timeout,
        "socket_timeout": 10,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    config = {
        "broker_url": redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_time_limit": hard_limit,
        "task_soft_time_limit": soft_limit,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_pool_limit": 4,
        "beat_schedule": {
            "reconcile": {"task": "rcbatch.reconcile",
                          "schedule": timedelta(seconds=RECONCILE_EVERY)},
            "schedules": {"task": "rcbatch.schedules",
                          "schedule": timedelta(seconds=SCHEDULES_EVERY)},
        },
    }
    if is_sentinel_url(redis_url):
        config["broker_url"], options = kombu_broker(parse_sentinel_url(redis_url))
        transport.update(options)
        config["broker_transport"] = broker.SENTINEL_TRANSPORT
    elif redis_url.split("://", 1)[0] in broker.SCHEMES:
        config["broker_transport"] = broker.TRANSPORT
    if redis_url.startswith("rediss://"):
        config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return config


def configure(settings: Any) -> Celery:
    """Point the app at the settings' Redis and remember the settings for the workers."""
    if not settings.redis_url:
        raise ValueError("configure() needs settings with a redis_url")
    timeout = float(getattr(settings, "visibility_timeout", VISIBILITY_TIMEOUT))
    app.conf.update(celery_config(settings.redis_url, timeout))
    app.conf.rcbatch_settings = settings
    return app
