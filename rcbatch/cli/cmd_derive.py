"""`rcbatch derive`: a new batch feeding a batch's image outputs into another model.

    rcbatch derive BATCH --model bytedance/dreamina-3-0/image-to-video \\
        --set prompt="slow pan" --sweep resolution=720P,1080P --wait

The new batch lives in the parent's bucket (its inputs are the parent's output objects,
pre-signed when each item is submitted). Like `submit` it registers for running workers and
returns; with `--wait` (or `--run`) it runs like `run`, with workers started here.
"""

from __future__ import annotations

import json
from typing import Any

import click

from rcbatch.cli.cmd_validate import preflight_option, print_problems, sweep_option
from rcbatch.cli.services import open_redis
from rcbatch.config import Settings, load_settings
from rcbatch.errors import InputError


def _sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--set FIELD=VALUE` options; values are JSON when they parse (121, true), else text."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            fields[name.strip()] = json.loads(value)
        except ValueError:
            fields[name.strip()] = value
    return fields


@click.command()
@click.argument("batch", metavar="BATCH")
@click.option("--model", required=True, metavar="MODEL", help="The model fed the outputs.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="A field of every new item (repeatable); VALUE is JSON or text.")
@sweep_option
@click.option("--only", metavar="ITEM_IDS", help="Only these parent items (comma-separated).")
@click.option("--where", metavar="status=STATE", default="status=completed", show_default=True,
              help="Which parent items feed the new batch.")
@click.option("--name", help="Batch name; deriving again under a name resumes that batch.")
@click.option("--wait", "--run", "wait", is_flag=True,
              help="Start workers here (like `run`) and wait until the batch ends.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"batch_id": ..., "items": N} instead of the id.')
@preflight_option
def derive(batch: str, model: str, sets: tuple[str, ...], sweeps: tuple[str, ...],
           only: str | None, where: str, name: str | None, wait: bool, as_json: bool,
           no_preflight: bool) -> None:
    """A new batch with one item per completed image output of BATCH, fed into MODEL."""
    from rcbatch.producer.sweep import parse_cli_sweep
    from rcbatch.runcomfy.catalogue import use_models_dir

    settings = load_settings()
    use_models_dir(settings.resolved_models_dir())
    request = _Request(model, _sets(sets), parse_cli_sweep(sweeps), only, where, name,
                       not no_preflight)
    with open_redis(settings) as url:
        bid, count = _register(settings.model_copy(update={"redis_url": url}), batch, request)
    click.echo(json.dumps({"batch_id": bid, "items": count}) if as_json else bid)
    if wait:
        from rcbatch.cli.waiting import wait_here

        raise SystemExit(wait_here(settings, bid))
    _nudge(settings, bid)


class _Request:
    """What the command line asked for."""

    def __init__(self, model: str, sets: dict[str, Any], sweep: dict[str, list[Any]],
                 only: str | None, where: str, name: str | None, preflight: bool) -> None:
        from rcbatch.producer.derive import Selection

        self.model, self.sets, self.sweep, self.name = model, sets, sweep, name
        self.selection = Selection.from_options(only, where)
        self.preflight = preflight


def _register(settings: Settings, batch: str, request: _Request) -> tuple[str, int]:
    """Check the derived items against the model and register them; (batch id, items)."""
    from rcbatch.cli.cmd_batch import live_batch
    from rcbatch.producer import derive as derived
    from rcbatch.producer.batch import register_batch
    from rcbatch.producer.spec import model_tag
    from rcbatch.runcomfy.addresses import is_loopback_url
    from rcbatch.worker.bucket import open_bucket
    from rcbatch.worker.bucket.inputs import serving_problem
    from rcbatch.worker.connection import redis_client
    from rcbatch.worker.state import Store

    store = Store(redis_client(settings.redis_url or ""))
    pbid = live_batch(store, batch, settings.resolved_bucket_url())
    parent = store.batch(pbid) or {}
    rows = derived.parent_rows(pbid, store.iter_items(pbid), request.model, request.sets,
                               request.selection)
    if not rows:
        raise InputError(f"batch {pbid} has no image outputs of {request.selection.status} "
                         "items to derive from")
    simulated = parent.get("simulated") == "1"
    loopback = simulated or is_loopback_url(settings.runcomfy_base_url)
    checked = derived.derive_items(rows, sweep=request.sweep, allow_loopback_http=loopback)
    print_problems(checked.warnings, warning=True)
    bucket_url = parent.get("bucket_url") or settings.resolved_bucket_url()
    bucket = open_bucket(bucket_url, s3_endpoint_url=settings.s3_endpoint_url)
    problem = serving_problem(bucket, api_on_loopback=loopback)
    if problem:
        raise InputError(f"batch {pbid}'s outputs cannot be sent to the API: {problem}")
    if request.preflight:
        derived.check_outputs(checked.items, bucket)
    name = request.name or f"{parent.get('name') or pbid}-{model_tag(request.model)}"
    reg = register_batch(store, checked.items, name=name, bucket_url=bucket_url,
                         sources=[f"derive:{pbid}"], prices=settings.prices,
                         extra={"parent_batch": pbid})
    if simulated:  # `--wait` starts the simulator for it, as for its parent
        store.set_batch(reg.batch_id, simulated="1")
    return reg.batch_id, len(checked.items)


def _nudge(settings: Settings, bid: str) -> None:
    """Wake running workers; when none answers, say what runs the batch."""
    from rcbatch.cli.services import wake_workers

    if not settings.redis_url:
        click.echo(f"rcbatch: batch {bid} registered in the embedded Redis: "
                   f"`rcbatch retry {bid} --wait` runs it (or derive with --wait)", err=True)
        return
    wake_workers(settings, "start `rcbatch worker`, or derive with --wait")
