"""Waiting on a batch the way `run` does: workers started here, live progress until every
item is terminal (or the batch stopped early), the manifest written, one line on how it ended.

`run`, and `retry`, `resume` and `submit` with `--wait`, all end through `wait_for`.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from rcbatch.cli.logs import log_to_file, warnings_line
from rcbatch.cli.outcome import outcome
from rcbatch.cli.progress import follow, summary
from rcbatch.cli.services import open_store
from rcbatch.cli.session import Session, session, token_for
from rcbatch.config import Settings


def wait_for(ses: Session, rt: Any, bid: str, settings: Settings) -> int:
    """Follow the batch to its end (or an early stop), write its manifest, say how it ended."""
    from rcbatch.worker.tasks import refresh_manifest

    counts = follow(ses.store, bid, tick=ses.supervisor.check)
    url = refresh_manifest(rt, bid)
    ended = outcome(ses.store, bid, counts, again=again_command())
    click.echo(f"done: {summary(counts)}", err=True)
    if ended.line:
        click.echo(f"rcbatch: {ended.line}", err=True)
    click.echo(f"outputs: {outputs_folder(settings, bid)}", err=True)
    click.echo(f"manifest: {url}")
    return ended.code


def wait_here(settings: Settings, bid: str) -> int:
    """Run the batch with workers started here (like `run`) and wait for its end."""
    from rcbatch.worker.reconciler import redrive_batch

    with open_store(settings) as store:
        simulated = (store.batch(bid) or {}).get("simulated") == "1"
    token = token_for(settings, simulate=simulated)
    log_path = settings.state_dir / "logs" / "run.log"
    counter = log_to_file(log_path, level=settings.log_level, secrets=[token])
    with session(settings, token, simulate=simulated) as ses:
        rt = ses.runtime()
        redrive_batch(rt, bid)
        rt.publisher.dispatch()
        code = wait_for(ses, rt, bid, settings)
    warned = warnings_line(counter, log_path)
    if warned:
        click.echo(warned, err=True)
    return code


def again_command() -> str:
    """The command line this run was started with, to continue it the same way."""
    return "`rcbatch " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`"


def outputs_folder(settings: Settings, bid: str) -> str:
    """Where a batch's outputs land: a folder path for a local bucket, else the bucket URL."""
    url = settings.resolved_bucket_url().rstrip("/") + "/" + bid
    return url.removeprefix("file://")
