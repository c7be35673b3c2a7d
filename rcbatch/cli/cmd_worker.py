"""`rcbatch worker`: a Celery worker for rcbatch's tasks, joining the configured Redis."""

from __future__ import annotations

import click

from rcbatch.cli.logs import configure_logging
from rcbatch.config import load_settings
from rcbatch.errors import InputError


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """A Celery worker for these tasks; CELERY_ARGS go to `celery worker` (e.g. -c 4).

    Any number of workers on any machines can join the same RCBATCH_REDIS_URL. No beat is
    needed: one worker at a time (whichever holds a lease in Redis) sends the reconciler's
    and the schedules' nudges, and another takes over within seconds if it stops.
    """
    from rcbatch.worker.celery_app import QUEUE, configure

    settings = load_settings()
    if not settings.redis_url:
        raise InputError("worker needs RCBATCH_REDIS_URL (the Redis that batches are in)")
    configure_logging(level=settings.log_level, secrets=[settings.token_value() or ""])
    app = configure(settings)
    app.worker_main(["worker", "--queues", QUEUE, "--loglevel", "WARNING", *celery_args])
