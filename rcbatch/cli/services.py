"""Reaching the services a command needs: Redis (given or embedded) and a batch by id or name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from rcbatch.cli.embedded_redis import ensure_redis
from rcbatch.config import Settings
from rcbatch.errors import InputError
from rcbatch.worker.connection import check_redis, redis_client
from rcbatch.worker.state import Store


@contextmanager
def open_redis(settings: Settings) -> Iterator[str]:
    """The URL of RCBATCH_REDIS_URL, or of the embedded Redis of the state folder.

    The embedded server keeps its data (append-only file) in the state folder, so `status`
    after a finished `rcbatch run` starts it again briefly to read what the run left.
    """
    url, server = ensure_redis(settings.redis_url, settings.state_dir)
    try:
        check_redis(redis_client(url))
        yield url
    finally:
        if server is not None:
            server.stop()


@contextmanager
def open_store(settings: Settings) -> Iterator[Store]:
    """A Store over the Redis of `open_redis`."""
    with open_redis(settings) as url:
        yield Store(redis_client(url), retention=settings.retention)


def resolve_batch(store: Store, ref: str) -> str:
    """The batch id for `ref`, a batch id or a batch name; InputError when unknown."""
    if store.batch(ref) is not None:
        return ref
    bid = store.batch_id_for_name(ref)
    if bid is None:
        raise InputError(f"no batch with id or name {ref!r}")
    return bid


def wake_workers(settings: Settings, how_to_run: str) -> None:
    """Send the dispatch nudge to the workers of this Redis; when none answers a ping, say
    in one line that nothing runs yet and `how_to_run` it."""
    from rcbatch.worker.celery_app import configure
    from rcbatch.worker.tasks import CeleryPublisher

    app = configure(settings)
    CeleryPublisher().dispatch()
    if not app.control.ping(timeout=1.0, limit=1):
        click.echo(f"rcbatch: no worker is serving this Redis, so nothing runs yet: "
                   f"{how_to_run}", err=True)
