"""`rcbatch validate` and `rcbatch submit`: check every row before any money is spent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from rcbatch.config import Settings, load_settings
from rcbatch.errors import InputError, Problem, RetryLater, ServiceUnavailable, ValidationFailed
from rcbatch.producer.batch import estimate_total
from rcbatch.producer.spec import CheckResult, ItemSpec, read_and_check
from rcbatch.runcomfy.addresses import is_loopback_url

files_argument = click.argument("files", nargs=-1, required=True,
                                type=click.Path(path_type=Path, allow_dash=True))
model_option = click.option("--model", "default_model", metavar="MODEL",
                            help="Model for rows that do not name one.")
preflight_option = click.option("--no-preflight", is_flag=True,
                                help="Do not fetch input images to check them.")
sweep_option = click.option("--sweep", "sweeps", multiple=True, metavar="FIELD=V1,V2",
                            help="Sweep FIELD over these values for every row (repeatable).")
max_cost_option = click.option(
    "--max-cost", type=click.FloatRange(min=0), metavar="USD",
    help="Never reserve more than USD for this batch (estimates; the rest stays pending).")
unchecked_option = click.option(
    "--unchecked-model", "unchecked_model", is_flag=True,
    help="Let rows naming a model rcbatch does not know through to the API's own "
         "validation (marked unchecked_model in the manifest); `rcbatch models add` is "
         "the checked way.")
repeat_option = click.option("--repeat", type=click.IntRange(1, 1000), default=None,
                             help="Run each combination N times (distinct seeds).")


def spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """FILES, --model, --no-preflight, --sweep, --repeat and --unchecked-model: how a
    submission is read."""
    for option in (unchecked_option, repeat_option, sweep_option, preflight_option,
                   model_option, files_argument):
        command = option(command)
    return command


@dataclass(frozen=True)
class Expansion:
    """How a submission's rows expand: --sweep axes and --repeat."""

    sweep: dict[str, list[Any]]
    repeat: int | None

    @classmethod
    def from_options(cls, sweeps: Sequence[str], repeat: int | None) -> Expansion:
        """Parse the command-line options."""
        from rcbatch.producer.sweep import parse_cli_sweep

        return cls(parse_cli_sweep(sweeps), repeat)


@dataclass
class Checked:
    """A checked submission: its items, and the warnings worth showing."""

    items: list[ItemSpec]
    warnings: list[Problem]
    by_model: dict[str, int]


def check_files(files: Sequence[Path], *, default_model: str | None, preflight: bool,
                settings: Settings, expansion: Expansion | None = None,
                simulated: bool = False, unchecked_models: bool = False) -> Checked:
    """Read, validate and (optionally) preflight every row; ValidationFailed lists all errors.

    Plain-http input URLs are accepted only on loopback, and only when the API itself is on
    loopback (the simulator), which is the only API that could fetch them.
    """
    from rcbatch.runcomfy.catalogue import use_models_dir

    use_models_dir(settings.resolved_models_dir())  # the user's models: `rcbatch models add`
    for path in files:
        if path.is_dir():
            raise InputError(f"{path}: is a folder; name the CSV or JSONL files in it")
        if not path.is_file() and str(path) != "-":
            raise InputError(f"{path}: no such file")
    expansion = expansion or Expansion({}, None)
    loopback = simulated or is_loopback_url(settings.runcomfy_base_url)
    result = read_and_check(list(files), default_model=default_model,
                            allow_loopback_http=loopback, sweep=expansion.sweep,
                            repeat=expansion.repeat, max_items=settings.max_items,
                            unchecked_models=unchecked_models)
    if preflight and not result.problems:
        found = run_preflight(result.items, settings, allow_loopback_http=loopback)
        # one line per problem a row's items share, with their count
        result.add_problems(found["error"], found["warning"])
    if result.problems:
        raise ValidationFailed(list(result.problems))
    return Checked(list(result.items), list(result.warnings), _by_model(result))


def _by_model(result: CheckResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in result.items:
        counts[item.model] = counts.get(item.model, 0) + 1
    return counts


def run_preflight(items: Sequence[ItemSpec], settings: Settings, *,
                  allow_loopback_http: bool = False) -> dict[str, list[Problem]]:
    """Fetch each input image's header and check it: {"error": [...], "warning": [...]}.

    Every URL and every redirect hop goes through the address policy
    (`rcbatch.runcomfy.addresses`): nothing on this machine or a private network is fetched,
    except loopback when the API itself is the local simulator (`allow_loopback_http`).
    """
    from rcbatch.runcomfy.catalogue import Issue
    from rcbatch.runcomfy.preflight import Preflight

    async def go() -> list[list[Issue]]:
        timeout = httpx.Timeout(connect=settings.http_connect_timeout, read=20.0, write=20.0,
                                pool=30.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            checker = Preflight(client, concurrency=settings.preflight_concurrency,
                                allow_loopback_http=allow_loopback_http)
            return await checker.check_rows([(i.model, i.input) for i in items])

    found: dict[str, list[Problem]] = {"error": [], "warning": []}
    for item, issues in zip(items, asyncio.run(go()), strict=True):
        for issue in issues:
            found[issue.severity].append(Problem(item.file, item.line, issue.field,
                                                 issue.message))
    return found


def input_stager(settings: Settings, items: Sequence[ItemSpec], *,
                 simulated: bool = False) -> Callable[[str], None] | None:
    """What uploads the submission's local input files into the batch's bucket, once per
    content hash, before its items are registered (`register_batch(stage=...)`); None when
    there are none. InputError now, before anything starts, when the API could not fetch
    them from that bucket (a local folder, or plain http off loopback)."""
    from rcbatch.producer.local_inputs import files_of, upload
    from rcbatch.worker.bucket import open_bucket
    from rcbatch.worker.bucket.inputs import serving_problem

    files = files_of(items)
    if not files:
        return None
    bucket = open_bucket(settings.resolved_bucket_url(), s3_endpoint_url=settings.s3_endpoint_url)
    loopback = simulated or is_loopback_url(settings.runcomfy_base_url)
    problem = serving_problem(bucket, api_on_loopback=loopback)
    if problem:
        raise InputError(f"{len(files)} local input files cannot be sent: {problem}")

    def stage(bid: str) -> None:
        try:
            upload(bucket, bid, files)
        except RetryLater as exc:  # the bucket is unreachable right now: exit 3, try later
            raise ServiceUnavailable(exc.message, kind=exc.kind) from exc

    return stage


def cost_line(items: Sequence[ItemSpec], settings: Settings) -> str:
    """`estimated cost: $X.XX` (estimates from config/prices.py, see README)."""
    total = estimate_total(items, settings.prices)
    return f"estimated cost: ${total:.2f} (estimates; set RCBATCH_PRICES to your prices)"


def print_problems(problems: Sequence[Problem], *, warning: bool = False) -> None:
    """One line per problem on stderr: `FILE:LINE: FIELD: message`."""
    for problem in problems:
        text = str(problem)
        if warning:
            text = f"{problem.file}:{problem.line}: {problem.field}: warning: {problem.message}"
        click.echo(text, err=True)


@click.command()
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(files: tuple[Path, ...], default_model: str | None, no_preflight: bool,
             sweeps: tuple[str, ...], repeat: int | None, unchecked_model: bool,
             as_json: bool) -> None:
    """Check every row of FILES without enqueuing anything; count items after sweeps."""
    settings = load_settings()
    try:
        checked = check_files(files, default_model=default_model, preflight=not no_preflight,
                              settings=settings, unchecked_models=unchecked_model,
                              expansion=Expansion.from_options(sweeps, repeat))
    except ValidationFailed as exc:
        if not as_json:
            raise
        click.echo(json.dumps({"items": 0, "by_model": {},
                               "errors": [p.as_dict() for p in exc.problems]}))
        raise SystemExit(2) from None
    if as_json:
        click.echo(json.dumps({"items": len(checked.items), "by_model": checked.by_model,
                               "errors": [],
                               "warnings": [w.as_dict() for w in checked.warnings],
                               "estimated_cost_usd": round(estimate_total(
                                   checked.items, settings.prices), 4)}))
        return
    print_problems(checked.warnings, warning=True)
    click.echo(f"{len(checked.items)} items valid")
    for model, count in sorted(checked.by_model.items()):
        click.echo(f"  {model}: {count}")
    click.echo(cost_line(checked.items, settings))


@click.command()
@spec_options
@click.option("--name", help="Batch name; submitting again under a name resumes that batch.")
@click.option("--at", "at", metavar="WHEN", help="Start at this time (HH:MM or ISO 8601).")
@max_cost_option
@click.option("--json", "as_json", is_flag=True, help="Print {batch_id, items} as JSON.")
@click.option("--wait", is_flag=True,
              help="Start workers here (like `run`) and wait until the batch ends.")
def submit(files: tuple[Path, ...], default_model: str | None, no_preflight: bool,
           sweeps: tuple[str, ...], repeat: int | None, unchecked_model: bool, name: str | None,
           at: str | None, max_cost: float | None, as_json: bool, wait: bool) -> None:
    """Validate FILES and register a batch for running workers; returns at once."""
    from rcbatch.cli.schedule import parse_when
    from rcbatch.cli.services import wake_workers
    from rcbatch.producer.batch import default_name, register_batch
    from rcbatch.worker.connection import check_redis, redis_client
    from rcbatch.worker.state import Store

    settings = load_settings()
    if not settings.redis_url:
        raise InputError("submit needs RCBATCH_REDIS_URL (the Redis your workers use); "
                         "`rcbatch run` starts everything itself")
    start_at = parse_when(at) if at else None
    checked = check_files(files, default_model=default_model, preflight=not no_preflight,
                          settings=settings, unchecked_models=unchecked_model,
                          expansion=Expansion.from_options(sweeps, repeat))
    print_problems(checked.warnings, warning=True)
    stage = input_stager(settings, checked.items)
    client = redis_client(settings.redis_url)
    check_redis(client)
    reg = register_batch(Store(client), checked.items, name=name or default_name(files),
                         bucket_url=settings.resolved_bucket_url(),
                         sources=[str(f) for f in files], start=start_at is None,
                         start_at=start_at, max_cost=max_cost, prices=settings.prices,
                         stage=stage)
    if as_json:
        click.echo(json.dumps({"batch_id": reg.batch_id, "items": len(checked.items)}))
    else:
        click.echo(reg.batch_id)
    if wait:
        from rcbatch.cli.waiting import wait_here

        raise SystemExit(wait_here(settings, reg.batch_id))
    wake_workers(settings, "start `rcbatch worker` (any number, on any machine), or submit "
                           "with --wait")
