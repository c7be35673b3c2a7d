"""Commands on registered batches: ls, status, watch, manifest, retry, cancel, pause, resume,
prune.

A finished batch's records expire from Redis after the retention setting (worker/retention.py);
`status` and `ls` then answer from its tombstone, and every other command says in one line
when the records expired and where the manifest is (exit 2).
"""

from __future__ import annotations

import json
import time

import click

from rcbatch.cli.progress import batch_state, follow, summary
from rcbatch.cli.services import open_redis, open_store, resolve_batch, wake_workers
from rcbatch.config import Settings, load_settings
from rcbatch.errors import InputError
from rcbatch.worker import keys, operations, retention
from rcbatch.worker.connection import redis_client
from rcbatch.worker.manifest import manifest_keys
from rcbatch.worker.state import Store

batch_argument = click.argument("batch", metavar="BATCH")
wait_option = click.option("--wait", is_flag=True,
                           help="Start workers here (like `run`) and wait until the batch ends.")


def manifest_url(bid: str, bucket_url: str) -> str:
    """Where a batch's manifest.jsonl is, in its bucket (`bucket_url`, or the default one)."""
    from rcbatch.worker.bucket import open_bucket

    settings = load_settings()
    bucket = open_bucket(bucket_url or settings.resolved_bucket_url(),
                         s3_endpoint_url=settings.s3_endpoint_url)
    return bucket.url_for(manifest_keys(bid)[0])


def status_document(store: Store, bid: str, bucket_url: str) -> dict[str, object]:
    """The `status --json` document of a batch (of its tombstone once its records expired:
    then with `expired: true` and `expired_at`)."""
    record = store.batch(bid)
    if record is None:
        stone = retention.tombstone(store, bid)
        if stone is not None:
            return tombstone_document(stone, bucket_url)
    record = record or {}
    counts = store.counts(bid)
    doc: dict[str, object] = {
        "batch_id": bid, "name": record.get("name"), "state": batch_state(record, counts),
        "counts": counts, "total": int(record.get("total", 0)),
        "manifest": manifest_url(bid, record.get("bucket_url") or bucket_url),
        "expired": False,
    }
    if record.get("state") == keys.BATCH_PAUSED:
        doc["paused"] = record.get("pause_reason") or "paused"
    stone = retention.tombstone(store, bid)
    if stone is not None:  # finished: its records are kept until then
        doc["expires_at"] = float(stone["expires_at"])
    return doc


def tombstone_document(stone: dict[str, str], bucket_url: str) -> dict[str, object]:
    """The `status --json` document of a batch whose records expired."""
    bid = stone["id"]
    return {"batch_id": bid, "name": stone.get("name") or None, "state": stone["state"],
            "counts": json.loads(stone["counts"]), "total": int(stone.get("total") or 0),
            "manifest": manifest_url(bid, stone.get("bucket_url") or bucket_url),
            "expired": True, "expired_at": float(stone["expires_at"])}


def when(stamp: float) -> str:
    """A time as `2026-12-01 14:05 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def expired_message(doc: dict[str, object]) -> str:
    """One line: the batch's records expired on a date, and where its manifest is."""
    return (f"batch {doc['batch_id']} ({doc['name']}): its records expired from Redis on "
            f"{when(float(doc['expired_at']))}; its manifest is {doc['manifest']}")  # type: ignore[arg-type]


def live_batch(store: Store, ref: str, bucket_url: str) -> str:
    """The id of the batch `ref` (id or name) whose records are still here; InputError
    saying when they expired and where the manifest is when only its tombstone is left."""
    stone = retention.expired(store, ref)
    if stone is not None:
        raise InputError(expired_message(tombstone_document(stone, bucket_url)))
    return resolve_batch(store, ref)


def find_batch(store: Store, ref: str) -> str:
    """The id of the batch `ref` (id or name), live or expired (its tombstone)."""
    stone = retention.expired(store, ref)
    return stone["id"] if stone is not None else resolve_batch(store, ref)


@click.command()
@batch_argument
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(batch: str, as_json: bool) -> None:
    """Counts per state of BATCH (an id or a name)."""
    settings = load_settings()
    with open_store(settings) as store:
        bid = find_batch(store, batch)
        doc = status_document(store, bid, settings.resolved_bucket_url())
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"batch {bid} ({doc['name']}): {doc['state']}")
    click.echo(f"  {summary(doc['counts'])}  (total {doc['total']})")  # type: ignore[arg-type]
    if "paused" in doc:
        click.echo(f"  paused: {doc['paused']}")
    if doc["expired"]:
        click.echo(f"  records expired from Redis on {when(doc['expired_at'])}: "  # type: ignore[arg-type]
                   f"only this summary is left; the manifest has every item")
    elif "expires_at" in doc:
        click.echo(f"  records kept in Redis until {when(doc['expires_at'])}")  # type: ignore[arg-type]
    click.echo(f"  manifest: {doc['manifest']}")


def batch_row(store: Store, bid: str) -> dict[str, object] | None:
    """One line of `rcbatch ls`: what a person scans a list of batches for (from its
    tombstone once its records expired; None when neither is left)."""
    record = store.batch(bid)
    stone = retention.tombstone(store, bid) if record is None else None
    if record is None and stone is None:
        return None
    if stone is not None:
        return {"batch_id": bid, "name": stone.get("name") or None, "state": stone["state"],
                "counts": json.loads(stone["counts"]), "total": int(stone.get("total") or 0),
                "created": float(stone.get("created") or 0),
                "spend": round(float(stone.get("spend") or 0), 4), "expired": True}
    record = record or {}
    counts = store.counts(bid)
    return {"batch_id": bid, "name": record.get("name"), "state": batch_state(record, counts),
            "counts": counts, "total": int(record.get("total", 0)),
            "created": float(record.get("created_at") or 0),
            "spend": round(float(record.get("reserved_cost") or 0), 4), "expired": False}


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ls(as_json: bool) -> None:
    """The batches this Redis knows, newest first: id, name, state, counts, created, spend
    (batches whose records expired from their tombstones)."""
    settings = load_settings()
    with open_store(settings) as store:
        rows = [row for bid in reversed(store.all_batches())
                if (row := batch_row(store, bid)) is not None]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no batches yet (state folder {settings.state_dir})", err=True)
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["created"])))  # type: ignore[arg-type]
        click.echo(f"{row['batch_id']}  {row['name']}  {row['state']}  {created}  "
                   f"${row['spend']:.2f}  {summary(row['counts'])}"  # type: ignore[arg-type]
                   f"{'  (records expired)' if row['expired'] else ''}")


@click.command()
@batch_argument
def watch(batch: str) -> None:
    """Live progress of BATCH until it is finished."""
    settings = load_settings()
    with open_store(settings) as store:
        counts = follow(store, live_batch(store, batch, settings.resolved_bucket_url()))
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
        rt.store.retention = settings.retention  # a finished batch's expiry counts from it
        bid = live_batch(rt.store, batch, settings.resolved_bucket_url())
        click.echo(refresh_manifest(rt, bid))


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
        store = Store(redis_client(url), retention=settings.retention)
        bid = live_batch(store, batch, settings.resolved_bucket_url())
        chosen = [r for r in store.iter_items(bid)
                  if operations.retryable(r, all_failed=all_failed, uncertain=uncertain)]
        count = operations.retry_items(store, bid, chosen)
        click.echo(f"{count} items queued again in batch {bid}")
        if count and not wait:  # without a nudge they would wait for the reconciler's tick
            wake_workers(settings.model_copy(update={"redis_url": url}),
                         f"`rcbatch retry {batch} --wait` runs it here, or start "
                         "`rcbatch worker`")
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
        store = Store(redis_client(url), retention=settings.retention)
        bid = live_batch(store, batch, settings.resolved_bucket_url())
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
        bid = live_batch(store, batch, settings.resolved_bucket_url())
        operations.pause_batch(store, bid)
    click.echo(f"batch {bid} paused")


@click.command()
@batch_argument
@wait_option
def resume(batch: str, wait: bool) -> None:
    """Release a paused BATCH (e.g. after fixing the token or topping up the balance)."""
    settings = load_settings()
    with open_redis(settings) as url:
        store = Store(redis_client(url), retention=settings.retention)
        bid = live_batch(store, batch, settings.resolved_bucket_url())
        if not operations.resume_batch(store, bid):
            raise InputError(f"batch {bid} is not paused")
        click.echo(f"batch {bid} resumed")
        if not wait:
            wake_workers(settings.model_copy(update={"redis_url": url}),
                         f"`rcbatch resume {batch} --wait` runs it here, or start "
                         "`rcbatch worker`")
    if wait:
        from rcbatch.cli.waiting import wait_here

        raise SystemExit(wait_here(settings, bid))


@click.command()
@click.option("--older-than", "older_than", metavar="AGE",
              help="Only batches that finished at least AGE ago: 3d, 12h, 30m, or seconds "
                   "(default: the retention setting, RCBATCH_RETENTION).")
def prune(older_than: str | None) -> None:
    """Drop finished batches' records from Redis now; their tombstones (for `status` and
    `ls`) and their manifests in the bucket stay. A batch not finished is never touched."""
    settings = load_settings()
    age = retention.parse_age(older_than) if older_than is not None else settings.retention
    with open_redis(settings) as url:
        done = retention.prune(Store(redis_client(url), retention=settings.retention), age)
    click.echo(f"pruned {done.batches} finished batches ({done.keys} Redis keys) that "
               f"finished at least {age:g} s ago; their tombstones and manifests stay")
