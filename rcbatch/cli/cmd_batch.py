"""Commands on registered batches: ls, status, watch, manifest, retry, cancel, pause, resume."""

from __future__ import annotations

import json

import click

from rcbatch.cli.progress import batch_state, follow, summary
from rcbatch.cli.services import open_redis, open_store, resolve_batch
from rcbatch.config import Settings, load_settings
from rcbatch.errors import InputError
from rcbatch.worker import keys, operations
from rcbatch.worker.connection import redis_client
from rcbatch.worker.manifest import manifest_keys
from rcbatch.worker.state import Store

batch_argument = click.argument("batch", metavar="BATCH")
wait_option = click.option("--wait", is_flag=True,
                           help="Start workers here (like `run`) and wait until the batch ends.")


def status_document(store: Store, bid: str, bucket_url: str) -> dict[str, object]:
    """The `status --json` document of a batch."""
    from rcbatch.worker.bucket import open_bucket

    record = store.batch(bid) or {}
    counts = store.counts(bid)
    settings = load_settings()
    bucket = open_bucket(record.get("bucket_url") or bucket_url,
                         s3_endpoint_url=settings.s3_endpoint_url)
    doc: dict[str, object] = {
        "batch_id": bid, "name": record.get("name"), "state": batch_state(record, counts),
        "counts": counts, "total": int(record.get("total", 0)),
        "manifest": bucket.url_for(manifest_keys(bid)[0]),
    }
    if record.get("state") == keys.BATCH_PAUSED:
        doc["paused"] = record.get("pause_reason") or "paused"
    return doc


@click.command()
@batch_argument
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(batch: str, as_json: bool) -> None:
    """Counts per state of BATCH (an id or a name)."""
    settings = load_settings()
    with open_store(settings) as store:
        bid = resolve_batch(store, batch)
        doc = status_document(store, bid, settings.resolved_bucket_url())
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"batch {bid} ({doc['name']}): {doc['state']}")
    click.echo(f"  {summary(doc['counts'])}  (total {doc['total']})")  # type: ignore[arg-type]
    if "paused" in doc:
        click.echo(f"  paused: {doc['paused']}")
    click.echo(f"  manifest: {doc['manifest']}")


def batch_row(store: Store, bid: str) -> dict[str, object]:
    """One line of `rcbatch ls`: what a person scans a list of batches for."""
    record = store.batch(bid) or {}
    counts = store.counts(bid)
    return {"batch_id": bid, "name": record.get("name"), "state": batch_state(record, counts),
            "counts": counts, "total": int(record.get("total", 0)),
            "created": float(record.get("created_at") or 0),
            "spend": round(float(record.get("reserved_cost") or 0), 4)}


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ls(as_json: bool) -> None:
    """The batches this Redis knows, newest first: id, name, state, counts, created, spend."""
    import time

    settings = load_settings()
    with open_store(settings) as store:
        rows = [batch_row(store, bid) for bid in reversed(store.all_batches())]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no batches yet (state folder {settings.state_dir})", err=True)
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["created"])))  # type: ignore[arg-type]
        click.echo(f"{row['batch_id']}  {row['name']}  {row['state']}  {created}  "
                   f"${row['spend']:.2f}  {summary(row['counts'])}")  # type: ignore[arg-type]


@click.command()
@batch_argument
def watch(batch: str) -> None:
    """Live progress of BATCH until it is finished."""
    settings = load_settings()
    with open_store(settings) as store:
        counts = follow(store, resolve_batch(store, batch))
    click.echo(summary(counts))
    if counts["failed"] or counts["submit_uncertain"] or counts["cancelled"]:
        raise SystemExit(1)


@click.command()
@batch_argument
def manifest(batch: str) -> None:
    """(Re)write BATCH's manifest to the bucket and print its URL."""
    from rcbatch.worker.runtime import RecordingPublisher
    from rcbatch.worker.tasks import refresh_manifest
    from rcbatch.worker.wiring import build_runtime

    settings = load_settings()
    with open_redis(settings) as url:
        rt = build_runtime(settings.model_copy(update={"redis_url": url}), RecordingPublisher())
        click.echo(refresh_manifest(rt, resolve_batch(rt.store, batch)))


@click.command()
@batch_argument
@click.option("--only-failed", is_flag=True, help="Only failed items (the default).")
@click.option("--all-failed", is_flag=True, help="Also items that failed for their input.")
@click.option("--uncertain", is_flag=True,
              help="Also re-submit submit_uncertain items (they may be paid for twice).")
@wait_option
def retry(batch: str, only_failed: bool, all_failed: bool, uncertain: bool, wait: bool) -> None:
    """Re-run the failed items of BATCH (not those the API refused, unless --all-failed)."""
    settings = load_settings()
    with open_redis(settings) as url:
        store = Store(redis_client(url))
        bid = resolve_batch(store, batch)
        chosen = [r for r in store.iter_items(bid)
                  if operations.retryable(r, all_failed=all_failed, uncertain=uncertain)]
        count = operations.retry_items(store, bid, chosen)
        click.echo(f"{count} items queued again in batch {bid}")
        if count and not wait:  # without a nudge they would wait for the reconciler's tick
            _nudge_dispatch(settings.model_copy(update={"redis_url": url}),
                            f"rcbatch retry {batch} --wait")
    if wait:
        from rcbatch.cli.waiting import wait_here

        raise SystemExit(wait_here(settings, bid))


@click.command()
@batch_argument
@click.option("--discard", is_flag=True,
              help="Do not store the outputs of jobs already running (they are still paid).")
def cancel(batch: str, discard: bool) -> None:
    """Cancel BATCH for good: nothing more is submitted, queued remote jobs are cancelled."""
    settings = load_settings()
    with open_redis(settings) as url:
        store = Store(redis_client(url))
        bid = resolve_batch(store, batch)
        count = operations.cancel_batch(store, bid, discard=discard)
        remote = _cancel_remote_now(settings.model_copy(update={"redis_url": url}), bid)
    click.echo(f"batch {bid} cancelled: {count} pending items cancelled; {remote} jobs at the "
               f"API asked to cancel (those already running are paid for and "
               f"{'discarded' if discard else 'still stored'})")


def _cancel_remote_now(settings: Settings, bid: str) -> int:
    """Send every job still at the API a poll now: a poll of a cancelled batch cancels a
    queued job and follows a running one to its end."""
    from rcbatch.cli.logs import log_to_file
    from rcbatch.worker.celery_app import configure
    from rcbatch.worker.reconciler import poll_remote_now
    from rcbatch.worker.tasks import CeleryPublisher
    from rcbatch.worker.wiring import build_runtime

    log_to_file(settings.state_dir / "logs" / "cancel.log", level=settings.log_level,
                secrets=[settings.token_value() or ""])
    configure(settings)
    return poll_remote_now(build_runtime(settings, CeleryPublisher()), bid)


@click.command()
@batch_argument
def pause(batch: str) -> None:
    """Hold BATCH's submissions (jobs already submitted still finish and are stored)."""
    settings = load_settings()
    with open_store(settings) as store:
        bid = resolve_batch(store, batch)
        operations.pause_batch(store, bid)
    click.echo(f"batch {bid} paused")


@click.command()
@batch_argument
@wait_option
def resume(batch: str, wait: bool) -> None:
    """Release a paused BATCH (e.g. after fixing the token or topping up the balance)."""
    settings = load_settings()
    with open_redis(settings) as url:
        store = Store(redis_client(url))
        bid = resolve_batch(store, batch)
        if not operations.resume_batch(store, bid):
            raise InputError(f"batch {bid} is not paused")
        click.echo(f"batch {bid} resumed")
        if not wait:
            _nudge_dispatch(settings.model_copy(update={"redis_url": url}),
                            f"rcbatch resume {batch} --wait")
    if wait:
        from rcbatch.cli.waiting import wait_here

        raise SystemExit(wait_here(settings, bid))


def _nudge_dispatch(settings: Settings, wait_command: str) -> None:
    """Wake the workers up; when none answers, say so and what runs the batch."""
    from rcbatch.worker.celery_app import configure
    from rcbatch.worker.tasks import CeleryPublisher

    app = configure(settings)
    CeleryPublisher().dispatch()
    if not app.control.ping(timeout=1.0, limit=1):
        click.echo(f"rcbatch: no worker is serving this Redis, so nothing runs yet: "
                   f"`{wait_command}` runs it here, or start `rcbatch worker`", err=True)
