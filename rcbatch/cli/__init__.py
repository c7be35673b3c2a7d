"""The `rcbatch` command line (CONTRACT.md): exit codes, one-line errors, every command.

Exit codes: 0 success; 1 ran but some item failed (or a waited-for batch is not finished);
2 bad input or usage (nothing enqueued or changed); 3 a needed service was unreachable.
Errors are one line on stderr, `rcbatch: error: ...`; `--debug` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from rcbatch.errors import InputError, RcbatchError, ServiceUnavailable, ValidationFailed

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an error."""
    if isinstance(exc, InputError):
        return EXIT_INPUT
    if isinstance(exc, ServiceUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class RcbatchGroup(click.Group):
    """A click group that turns our errors into one line and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, translating errors at the edge."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ValidationFailed as exc:
            for problem in exc.problems:  # every problem, one line each, then the summary
                click.echo(str(problem), err=True)
            _fail(ctx, exc, EXIT_INPUT, str(exc))
        except RcbatchError as exc:
            _fail(ctx, exc, exit_code_for(exc), str(exc))
        except KeyboardInterrupt:
            click.echo("rcbatch: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug of ours: still one line, traceback with --debug
            _fail(ctx, exc, EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}")


def _fail(ctx: click.Context, exc: BaseException, code: int, message: str) -> None:
    if ctx.obj and ctx.obj.get("debug"):
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"rcbatch: error: {message}", err=True)
    ctx.exit(code)


@click.group(cls=RcbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """rcbatch: a durable batch runner for RunComfy's hosted generative models.

    Start with `rcbatch run FILE --simulate` to run a sweep against the local simulator.
    Settings come from RCBATCH_* environment variables or a .env file.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    _register_commands()
    cli.main(args=list(argv) if argv is not None else None, prog_name="rcbatch")


def _register_commands() -> None:
    from rcbatch.cli import cmd_batch, cmd_run, cmd_simulate, cmd_validate, cmd_worker
    for command in (cmd_run.run, cmd_validate.validate, cmd_validate.submit,
                    cmd_batch.status, cmd_batch.watch, cmd_batch.manifest, cmd_batch.retry,
                    cmd_batch.cancel, cmd_batch.pause, cmd_batch.resume, cmd_worker.worker,
                    cmd_simulate.simulate):
        cli.add_command(command)
