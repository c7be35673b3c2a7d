"""Celery tasks: thin glue that builds the process's runtime and the message's `StepRef`, and
calls a plain step; and the clock every worker's main process runs.

No task retries itself with `self.retry()`: a failed publish there drops the task for good
(measured). Steps reschedule by publishing a new nudge, and the reconciler covers any nudge
that was lost.

The clock (worker/lease.py) replaces Celery beat: every worker's main process keeps trying to
hold the `keys.CLOCK` lease, and the holder sends the nudges beat sent (`rcbatch.reconcile`,
`rcbatch.schedules`). It sends them rather than running them itself, so the main process
stays free to feed its pool (a reconcile may probe the API for seconds, a schedule firing
reads a spec from a bucket), the work runs under the tasks' time limits in a process that
may crash alone, and a beat started anyway is only a second sender of the same, twice-safe
messages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import structlog
from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from rcbatch.lifetime import exit_with_parent
from rcbatch.worker import fetching, keys, polling, reconciler, submission
from rcbatch.worker.celery_app import (
    CLOCK_LEASE,
    CLOCK_TICK,
    RECONCILE_EVERY,
    SCHEDULES_EVERY,
    TASK_TIME_LIMIT,
    app,
)
from rcbatch.worker.lease import Job, Lease, LeaseClock
from rcbatch.worker.manifest import write_manifest
from rcbatch.worker.poll_timer import PollTimer, run_round
from rcbatch.worker.refs import StepRef
from rcbatch.worker.runtime import Runtime
from rcbatch.worker.wiring import build_runtime, redis_client, warm_up

log = structlog.get_logger("rcbatch.worker")
_runtime: tuple[int, Runtime] | None = None
_clock: LeaseClock | None = None


class CeleryPublisher:
    """Publishes nudges as Celery tasks; a failed publish is logged and left to the reconciler.

    With a `timer`, a poll planned for later joins it and is run by a round, one message per
    group of polls (worker/poll_timer.py); without one (tools that only dispatch), every poll
    is a message of its own.
    """

    def __init__(self, celery_app: Any = app, timer: PollTimer | None = None) -> None:
        self.app = celery_app
        self.timer = timer

    def _send(self, name: str, args: list[Any], countdown: float) -> None:
        try:
            self.app.send_task(name, args=args, countdown=countdown or None)
        except Exception as exc:  # broker unreachable: the due set re-drives it
            log.warning("publish_failed", task=name, args=args, error=type(exc).__name__)

    def submit(self, bid: str, iid: str, token: str, countdown: float = 0) -> None:
        """Nudge a submit."""
        self._send("rcbatch.submit", [bid, iid, token], countdown)

    def submit_group(self, claims: Sequence[tuple[str, str, str]]) -> None:
        """Nudge the submits of several claimed items, in one message."""
        self._send("rcbatch.submit_group", [list(claim) for claim in claims], 0)

    def poll(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Nudge a poll: now as a message of its own, later through the timer."""
        self.polls([(bid, iid, seq)], countdown)

    def polls(self, polls: Sequence[tuple[str, str, int]], countdown: float) -> None:
        """Nudge polls: now as a message each, later through the timer (one round trip for
        all of them, `PollTimer.add`)."""
        if self.timer is None or countdown <= 0:
            for due in polls:
                self._send("rcbatch.poll", list(due), countdown)
            return
        try:
            armed = self.timer.add(polls, countdown)
        except Exception as exc:  # Redis unreachable: the due set re-drives them
            log.warning("publish_failed", task="rcbatch.poll", args=[list(d) for d in polls],
                        error=type(exc).__name__)
            return
        if armed is not None:
            self.poll_round(*armed)

    def poll_round(self, tick: int, countdown: float = 0) -> None:
        """Nudge the round of a tick's polls."""
        self._send("rcbatch.poll_round", [tick], countdown)

    def fetch(self, bid: str, iid: str, seq: int, countdown: float = 0) -> None:
        """Nudge a fetch."""
        self._send("rcbatch.fetch", [bid, iid, seq], countdown)

    def manifest(self, bid: str, countdown: float = 0) -> None:
        """Nudge a manifest rewrite."""
        self._send("rcbatch.manifest", [bid], countdown)

    def dispatch(self) -> None:
        """Nudge a dispatch (after a batch was registered)."""
        self._send("rcbatch.dispatch", [], 0)


@worker_process_init.connect
def _die_with_the_main_process(**_: Any) -> None:
    """A pool child dies with its worker's main process (no orphans after a SIGKILL)."""
    exit_with_parent()


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """A pool child sets up its runtime before it takes a task (`wiring.warm_up`); a failure
    here only leaves the set-up to the first task, which reports it as its own."""
    if getattr(app.conf, "rcbatch_settings", None) is None:
        return
    try:
        warm_up(runtime(), app.conf.rcbatch_settings)
    except Exception as exc:  # the first task meets it again, and says so
        log.warning("warm_up_failed", error=type(exc).__name__)


def worker_clock(celery_app: Any = app) -> LeaseClock:
    """The clock of one worker: while it holds the cluster's lease, it sends the reconcile
    and schedules nudges (see the module)."""
    settings = celery_app.conf.rcbatch_settings
    lease = Lease(redis_client(settings.redis_url), keys.CLOCK, CLOCK_LEASE)

    def sender(name: str) -> Any:
        return lambda: celery_app.send_task(name)

    jobs = [Job("reconcile", RECONCILE_EVERY, sender("rcbatch.reconcile")),
            Job("schedules", SCHEDULES_EVERY, sender("rcbatch.schedules"))]
    return LeaseClock(lease, jobs, CLOCK_TICK)


@worker_ready.connect
def _start_clock(**_: Any) -> None:
    """The worker's main process is up: start its clock (once; the consumer may restart)."""
    global _clock
    if _clock is None and getattr(app.conf, "rcbatch_settings", None) is not None:
        _clock = worker_clock().start()
        log.info("clock_started", token=_clock.lease.token)


@worker_shutting_down.connect
def _stop_clock(**_: Any) -> None:
    """A shutdown began: give the lease up now, not after the running tasks end (this runs
    in a signal handler, so the clock's thread does the releasing)."""
    if _clock is not None:
        _clock.stop()


@worker_shutdown.connect
def _join_clock(**_: Any) -> None:
    """The worker is done: let the clock's thread finish releasing the lease."""
    if _clock is not None:
        _clock.stop(wait=3.0)


def runtime() -> Runtime:
    """This process's runtime, built once per process (after the pool forks)."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        settings = app.conf.rcbatch_settings
        state = redis_client(settings.redis_url)
        lease = app.conf.task_time_limit or TASK_TIME_LIMIT  # no round outlives it
        publisher = CeleryPublisher(timer=PollTimer(state, lease=lease))
        _runtime = (os.getpid(), build_runtime(settings, publisher, state))
    return _runtime[1]


def _celery(rt: Runtime) -> tuple[CeleryPublisher, PollTimer]:
    """The runtime's publisher and its timer (a worker's runtime has both)."""
    assert isinstance(rt.publisher, CeleryPublisher) and rt.publisher.timer is not None
    return rt.publisher, rt.publisher.timer


@app.task(name="rcbatch.submit")
def submit_task(bid: str, iid: str, token: str) -> None:
    """Submit one claimed item."""
    submission.submit(runtime(), StepRef.claimed(bid, iid, token))


@app.task(name="rcbatch.submit_group")
def submit_group_task(*claims: list[str]) -> None:
    """Submit several claimed items ([bid, iid, token] each)."""
    submission.submit_group(runtime(), [StepRef.claimed(*claim) for claim in claims])


@app.task(name="rcbatch.poll")
def poll_task(bid: str, iid: str, seq: int) -> None:
    """Poll one item's remote job."""
    polling.poll(runtime(), StepRef.at_seq(bid, iid, seq))


@app.task(name="rcbatch.poll_round")
def poll_round_task(tick: int) -> None:
    """Run the polls planned up to the end of a tick."""
    rt = runtime()
    publisher, timer = _celery(rt)
    run_round(rt, timer, tick, again=lambda: publisher.poll_round(tick))


@app.task(name="rcbatch.fetch")
def fetch_task(bid: str, iid: str, seq: int) -> None:
    """Store one item's outputs."""
    fetching.fetch(runtime(), StepRef.at_seq(bid, iid, seq))


@app.task(name="rcbatch.dispatch")
def dispatch_task() -> None:
    """Fill free in-flight slots with pending items."""
    submission.dispatch(runtime())


@app.task(name="rcbatch.reconcile")
def reconcile_task() -> None:
    """Re-drive overdue items (sent by the worker clock), then forget the polls they left
    planned."""
    rt = runtime()
    reconciler.reconcile(rt)
    _celery(rt)[1].drop_stale(rt.clock() - 2 * rt.limits.step_grace)


@app.task(name="rcbatch.manifest")
def manifest_task(bid: str) -> None:
    """Rewrite a batch's manifest; mark the batch finished when every item is terminal."""
    refresh_manifest(runtime(), bid)


def refresh_manifest(rt: Runtime, bid: str) -> str:
    """Rewrite the manifest now; returns its URL."""
    rt.store.redis.delete(keys.manifest_pending(bid))
    finished = rt.store.is_finished(bid)
    stored = rt.run(write_manifest(rt.store, rt.bucket_for(bid), bid))
    if finished:
        record = rt.store.batch(bid) or {}
        if not record.get("finished_at"):
            rt.store.set_batch(bid, finished_at=str(rt.clock()))
            log.info("batch_finished", batch_id=bid, counts=rt.store.counts(bid))
        rt.store.mark_inactive(bid)
    return stored.url
