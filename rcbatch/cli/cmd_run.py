"""`rcbatch run`: the all-in-one command a new user tries first.

Validates the files (nothing starts when a row is wrong), uses RCBATCH_REDIS_URL or starts the
embedded Redis, optionally starts the simulator, starts N workers, registers the batch (a batch
of the same name resumes), shows progress until every item is terminal, writes the manifest,
and stops everything it started.
"""

from __future__ import annotations

import shlex
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
from rcbatch.cli.logs import log_to_file, warnings_line
from rcbatch.cli.session import session, token_for
from rcbatch.cli.waiting import again_command, outputs_folder, wait_for
from rcbatch.config import Settings, load_settings


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
        no_preflight: bool, unchecked_model: bool) -> None:
    """Run FILES end to end and wait until every item is done."""
    settings = load_settings(bucket_url=bucket_url)
    token = token_for(settings, simulate=simulate)
    log_path = settings.state_dir / "logs" / "run.log"
    counter = log_to_file(log_path, level=settings.log_level, secrets=[token])
    preflight = not no_preflight and not simulate
    if simulate and not no_preflight:
        click.echo("preflight skipped: the simulated API does not fetch input images", err=True)
    checked = check_files(files, default_model=default_model, preflight=preflight,
                          unchecked_models=unchecked_model,
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
        click.echo(f"\nrcbatch: interrupted; the batch is saved (jobs already at the API go on "
                   f"and are paid for). Resume with the same command: {again_command()}",
                   err=True)
        raise SystemExit(130) from None
    warned = warnings_line(counter, log_path)
    if warned:
        click.echo(warned, err=True)
    raise SystemExit(code)


def _run(settings: Settings, token: str, items: list[Any], batch_name: str,
         files: tuple[Path, ...], simulate: bool, sim_options: list[str], workers: int,
         concurrency: int, max_cost: float | None) -> int:
    from rcbatch.cli.cmd_validate import input_stager
    from rcbatch.producer.batch import register_batch
    from rcbatch.worker.reconciler import redrive_batch

    stage = input_stager(settings, items, simulated=simulate)  # refused before any start
    with session(settings, token, simulate=simulate, workers=workers, concurrency=concurrency,
                 sim_options=sim_options) as ses:
        reg = register_batch(ses.store, items, name=batch_name,
                             bucket_url=settings.resolved_bucket_url(),
                             sources=[str(f) for f in files], max_cost=max_cost,
                             prices=settings.prices, stage=stage)
        if simulate:  # `retry --wait` and `resume --wait` start the simulator for it again
            ses.store.set_batch(reg.batch_id, simulated="1")
        click.echo(f"batch {reg.batch_id} ({batch_name}): {reg.added} new items, "
                   f"{reg.existing} already known; outputs go to "
                   f"{outputs_folder(settings, reg.batch_id)}", err=True)
        rt = ses.runtime()
        if reg.existing:
            redrive_batch(rt, reg.batch_id)  # resuming: pick up in-flight items at once
        rt.publisher.dispatch()
        return wait_for(ses, rt, reg.batch_id, settings)
