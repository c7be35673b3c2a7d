"""`rcbatch run`: the all-in-one command a new user tries first.

Validates the files (nothing starts when a row is wrong), uses RCBATCH_REDIS_URL or starts the
embedded Redis, optionally starts the simulator, starts N workers, registers the batch (a batch
of the same name resumes), shows progress until every item is terminal, writes the manifest,
and stops everything it started.
"""

from __future__ import annotations

import secrets
import shlex
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from rcbatch.cli.cmd_validate import (
    Expansion,
    check_files,
    cost_line,
    max_cost_option,
    print_problems,
    spec_options,
)
from rcbatch.cli.embedded_redis import ensure_redis
from rcbatch.cli.logs import configure_logging
from rcbatch.cli.progress import follow, summary
from rcbatch.cli.supervisor import Supervisor
from rcbatch.config import Settings, load_settings
from rcbatch.errors import InputError


@click.command()
@spec_options
@click.option("--simulate", is_flag=True, help="Run against the local API simulator.")
@click.option("--simulate-args", default="", metavar="ARGS",
              help='Options for the simulator, e.g. "--duration 0.5-2 --concurrency 8".')
@click.option("--bucket", "bucket_url", metavar="URL",
              help="file:///abs/path or s3://bucket/prefix (default: RCBATCH_BUCKET_URL).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes to start.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Task slots per worker process.")
@click.option("--name", help="Batch name; running again under a name resumes that batch.")
@max_cost_option
def run(files: tuple[Path, ...], simulate: bool, simulate_args: str, bucket_url: str | None,
        workers: int, concurrency: int, name: str | None, default_model: str | None,
        sweeps: tuple[str, ...], repeat: int | None, max_cost: float | None,
        no_preflight: bool) -> None:
    """Run FILES end to end and wait until every item is done."""
    settings = load_settings(bucket_url=bucket_url)
    token = settings.token_value() or (f"sim-{secrets.token_hex(8)}" if simulate else None)
    if not token:
        raise InputError("RCBATCH_RUNCOMFY_API_TOKEN is not set (or use --simulate)")
    configure_logging(level=settings.log_level, secrets=[token])
    preflight = not no_preflight and not simulate
    if simulate and not no_preflight:
        click.echo("preflight skipped: the simulated API does not fetch input images", err=True)
    checked = check_files(files, default_model=default_model, preflight=preflight,
                          settings=settings, expansion=Expansion.from_options(sweeps, repeat),
                          simulated=simulate)
    print_problems(checked.warnings, warning=True)
    click.echo(f"{len(checked.items)} items; {cost_line(checked.items, settings)}", err=True)
    from rcbatch.producer.batch import default_name

    batch_name = name or default_name(files)
    try:
        code = _run(settings, token, checked.items, batch_name, files, simulate,
                    shlex.split(simulate_args), workers, concurrency, max_cost)
    except KeyboardInterrupt:
        click.echo(f"\nrcbatch: interrupted; the batch is saved. Resume with the same command "
                   f"(batch name {batch_name!r}).", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)


def _run(settings: Settings, token: str, items: list[Any], batch_name: str,
         files: tuple[Path, ...], simulate: bool, sim_options: list[str], workers: int,
         concurrency: int, max_cost: float | None) -> int:
    from rcbatch.producer.batch import register_batch
    from rcbatch.worker.celery_app import configure
    from rcbatch.worker.reconciler import redrive_batch
    from rcbatch.worker.state import Store
    from rcbatch.worker.tasks import CeleryPublisher, refresh_manifest
    from rcbatch.worker.wiring import build_runtime, check_redis, redis_client

    with ExitStack() as stack:
        redis_url, server = ensure_redis(settings.redis_url, settings.state_dir)
        if server is not None:
            stack.callback(server.stop)
        client = redis_client(redis_url)
        check_redis(client)
        sup = Supervisor(settings.state_dir / "logs", _child_env(settings, redis_url, token))
        stack.callback(sup.stop)
        base_url = settings.runcomfy_base_url
        if simulate:
            # The token goes through the environment, never the command line (ps shows it).
            sup.env = {**sup.env, "RCBATCH_SIMULATOR_TOKEN": token}
            base_url = sup.start_simulator(sim_options)
            sup.env = {**sup.env, "RCBATCH_RUNCOMFY_BASE_URL": base_url}
        run_settings = settings.model_copy(update={"redis_url": redis_url,
                                                   "runcomfy_base_url": base_url})
        sup.start_workers(workers, concurrency,
                          beat_schedule=settings.state_dir / "celerybeat-schedule")
        store = Store(client)
        reg = register_batch(store, items, name=batch_name,
                             bucket_url=settings.resolved_bucket_url(),
                             sources=[str(f) for f in files], max_cost=max_cost,
                             prices=settings.prices)
        click.echo(f"batch {reg.batch_id} ({batch_name}): {reg.added} new items, "
                   f"{reg.existing} already known", err=True)
        configure(run_settings)
        publisher = CeleryPublisher()
        rt = build_runtime(run_settings, publisher)
        if reg.existing:
            redrive_batch(rt, reg.batch_id)  # resuming: pick up in-flight items at once
        publisher.dispatch()
        counts = follow(store, reg.batch_id, tick=sup.check)
        url = refresh_manifest(rt, reg.batch_id)
        record = store.batch(reg.batch_id) or {}
        if record.get("state") == "paused":
            click.echo(f"rcbatch: batch paused: {record.get('pause_reason')}; fix it and run "
                       f"the same command again to resume", err=True)
        click.echo(f"done: {summary(counts)}", err=True)
        click.echo(f"manifest: {url}")
        total = sum(counts.values())
        return 0 if counts["completed"] == total else 1


def _child_env(settings: Settings, redis_url: str, token: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update({
        "RCBATCH_REDIS_URL": redis_url,
        "RCBATCH_RUNCOMFY_API_TOKEN": token,
        "RCBATCH_RUNCOMFY_BASE_URL": settings.runcomfy_base_url,
        "RCBATCH_BUCKET_URL": settings.resolved_bucket_url(),
        "RCBATCH_STATE_DIR": str(settings.state_dir),
        "RCBATCH_MAX_IN_FLIGHT": str(settings.max_in_flight),
        "RCBATCH_SUBMIT_RATE": str(settings.submit_rate),
    })
    if settings.s3_endpoint_url:
        env["RCBATCH_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env
