"""Clock-driven glue for scheduled work: recurring runs from the schedules file.

The worker clock (worker/tasks.py) sends `rcbatch.schedules` every 30 s, and so does a Celery
beat if one runs; a firing starts once however many send it (its run key, worker/schedules.py).

(One-off scheduled batches, `submit --at`, need no task of their own: the reconciler starts
them when their time comes.)
"""

from __future__ import annotations

from typing import Any

import structlog

from rcbatch.runcomfy.addresses import is_loopback_url
from rcbatch.worker.celery_app import app
from rcbatch.worker.runtime import Runtime
from rcbatch.worker.schedules import Schedule, fire_due, load_schedules, spec_file

log = structlog.get_logger("rcbatch.schedules")


def start_scheduled_run(rt: Runtime, settings: Any, schedule: Schedule, name: str) -> str:
    """Read, check and register the spec of one firing; returns the batch id."""
    from rcbatch.producer.batch import register_batch
    from rcbatch.producer.spec import read_and_check
    from rcbatch.worker.submission import dispatch

    # as `rcbatch submit` checks: plain-http image URLs only when the API is the simulator
    loopback = is_loopback_url(settings.runcomfy_base_url)
    with spec_file(schedule.spec, rt.buckets) as path:
        checked = read_and_check([path], allow_loopback_http=loopback,
                                 max_items=settings.max_items)
    checked.raise_if_invalid()
    reg = register_batch(rt.store, checked.items, name=name,
                         bucket_url=settings.resolved_bucket_url(), sources=[schedule.spec])
    log.info("scheduled_run_started", schedule=schedule.name, batch_id=reg.batch_id,
             items=reg.added)
    dispatch(rt)
    return reg.batch_id


def fire_schedules(rt: Runtime, settings: Any) -> list[str]:
    """Start the due firings of the configured schedules."""
    if not settings.schedules_file:
        return []
    schedules = load_schedules(settings.schedules_file)
    return fire_due(rt.store.redis, schedules, rt.clock(),
                    lambda s, name: start_scheduled_run(rt, settings, s, name), log)


@app.task(name="rcbatch.schedules")
def schedules_task() -> None:
    """Start the recurring runs that are due (sent by the worker clock, or by beat)."""
    from rcbatch.worker.tasks import runtime

    fire_schedules(runtime(), app.conf.rcbatch_settings)
