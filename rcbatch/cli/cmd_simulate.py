"""`rcbatch simulate`: the local RunComfy Model API simulator, in the foreground."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rcbatch.runcomfy.simulator import SimulatorConfig, parse_duration, run_forever

RATE = click.FloatRange(0.0, 1.0)
_FAULT_HELP = {
    "fail_5xx": "Rate of API requests answered 503.",
    "fail_429": "Rate of API requests answered 429 with Retry-After.",
    "slow": "Rate of API requests answered only after --slow-seconds (to exceed a client's "
            "read timeout; a slow submit still creates its job).",
    "drop": "Rate of API requests whose connection is closed without an answer (a dropped "
            "submit creates no job).",
    "lost_submit": "Rate of submits whose job IS created but whose answer is lost "
                   "(connection closed).",
    "job_fail": "Rate of jobs that end failed with an error object.",
    "output_404": "Rate of output files answering 404 (see --output-404-permanent).",
    "output_truncate": "Rate of output downloads cut off after half of their Content-Length.",
    "reset": "Rate of API requests whose connection is reset (TCP RST) without an answer "
             "(a reset submit creates no job).",
    "refuse": "Share of request bodies a content filter refuses with HTTP 400 (decided per "
              "body: the same body is always refused).",
}


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _models_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> str | None:
    """The user's models folder (default: the settings' one), loaded into the catalogue."""
    from rcbatch.runcomfy.catalogue import use_models_dir

    if value is None:
        from rcbatch.config import load_settings
        from rcbatch.errors import InputError

        try:
            value = load_settings().resolved_models_dir()
        except InputError as exc:  # a setting the simulator never uses must not stop it
            click.echo(f"rcbatch: serving the built-in models only: {exc}", err=True)
            return None
    use_models_dir(value)
    return str(value)


def _fault_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(_FAULT_HELP):
        flag = "--" + name.replace("_", "-")
        command = click.option(flag, name, type=RATE, default=0.0, show_default=True,
                               metavar="RATE", help=_FAULT_HELP[name])(command)
    return command


def config_from_options(**options: Any) -> SimulatorConfig:
    """A SimulatorConfig from the command's options (UsageError when they do not fit)."""
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return SimulatorConfig(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("simulate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless you mean otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=8189, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--token", envvar="RCBATCH_SIMULATOR_TOKEN", metavar="T",
              help="The one accepted Bearer token (also from RCBATCH_SIMULATOR_TOKEN); "
                   "without it any non-empty token is accepted, one account per token.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Jobs in progress per token; the rest wait in_queue, first in first out.")
@click.option("--duration", callback=_duration, metavar="MIN-MAX",
              help="Job duration in seconds for every model, e.g. 0.5-2 "
                   "[default: images 1-3, video 3-6].")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Multiply every job duration by this.")
@click.option("--seed", type=int, help="Seed of every random draw (durations, faults); "
                                       "without it one is picked and shown by /_sim/stats.")
@click.option("--image-scale", type=click.FloatRange(0, 4, min_open=True), default=1.0,
              show_default=True, help="Output images are this fraction of the requested size.")
@click.option("--image-format", type=click.Choice(["png", "jpeg"]), default="png",
              show_default=True, help="Format of output images.")
@click.option("--video-bytes", type=click.IntRange(min=0), default=1024 * 1024,
              show_default=True, help="Size of each output video (streamed, never in memory).")
@_fault_options
@click.option("--retry-after", type=click.IntRange(min=0), default=1, show_default=True,
              help="Retry-After seconds sent with an injected 429.")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long a slow answer is held back.")
@click.option("--output-404-permanent", type=RATE, default=1.0, show_default=True,
              help="Share of 404 outputs that never come back; the others answer 404 only "
                   "for their first --output-404-fetches GETs.")
@click.option("--output-404-fetches", type=click.IntRange(min=1), default=2, show_default=True,
              help="GETs a recovering 404 output fails before it is served.")
@click.option("--strict", is_flag=True,
              help="Also reject bodies that the validator only warns about.")
@click.option("--fetch-inputs", is_flag=True,
              help="Fetch each input image URL as the real API does: its sha256 and size show "
                   "in /_sim/jobs, and a URL not answering 200 with an image fails the job.")
@click.option("--access-log", is_flag=True, help="Log every request (never the token).")
@click.option("--state", "state_path", type=click.Path(path_type=Path), metavar="PATH",
              help="Keep the jobs across restarts in this folder (created if missing; the "
                   "database is PATH/simulator.sqlite3), or in PATH itself when it is a file "
                   "or ends in .sqlite3, .sqlite or .db. A restart on the same PATH serves the "
                   "earlier request ids, results and output files; the jobs' schedule goes on "
                   "as if the simulator had never stopped.")
@click.option("--models-dir", callback=_models_dir, type=click.Path(path_type=Path),
              metavar="PATH", help="Also serve the models added with `rcbatch models add` "
                                   "that are in PATH [default: RCBATCH_MODELS_DIR, else "
                                   "STATE_DIR/models].")
def simulate(**options: Any) -> None:
    """Run a local simulator of the RunComfy Model API until Ctrl-C or SIGTERM.

    It serves POST /v1/models/{model}, GET /v1/requests/{id}/status and /result and POST
    /v1/requests/{id}/cancel for the four supported models, checks the Bearer token, validates
    bodies with the documented rules, keeps a per-token concurrency cap and serves real output
    files. Its own endpoints: GET /_sim/stats, GET /_sim/jobs, GET /_sim/config,
    POST /_sim/reset, and sample inputs at /_sim/inputs/{W}x{H}.png|jpg.

    The first line on stdout is `rcbatch simulator listening on http://HOST:PORT`.
    Faults are rates in [0, 1], drawn from --seed.
    """
    run_forever(config_from_options(**options))
