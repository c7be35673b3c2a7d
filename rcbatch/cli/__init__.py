"""The `rcbatch` command line (CONTRACT.md): exit codes, one-line errors, every command.

Exit codes: 0 success; 1 ran but some item failed (or a waited-for batch is not finished);
2 bad input or usage (nothing enqueued or changed); 3 a needed service was unreachable.
Errors are one line on stderr, `rcbatch: error: ...`; `--debug` adds the traceback.

Commands are imported only when they run (`COMMANDS`): `rcbatch --help` imports click and
this module, `rcbatch status` the store and Redis, never the API client, boto3 or Celery.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from rcbatch import __version__
from rcbatch.errors import InputError, RcbatchError, ServiceUnavailable, ValidationFailed

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an error."""
    if isinstance(exc, InputError):
        return EXIT_INPUT
    if isinstance(exc, ServiceUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


#: name -> (module in rcbatch.cli, attribute, one-line help shown by `rcbatch --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("cmd_run", "run", "Validate, submit and run FILEs to the end, with live progress."),
    "submit": ("cmd_validate", "submit", "Validate FILEs and register a batch for workers."),
    "validate": ("cmd_validate", "validate", "Check every row of FILEs; enqueue nothing."),
    "ls": ("cmd_batch", "ls", "The batches this Redis knows, newest first."),
    "status": ("cmd_batch", "status", "Counts per state of BATCH (an id or a name)."),
    "watch": ("cmd_batch", "watch", "Live progress of BATCH until it is finished."),
    "manifest": ("cmd_batch", "manifest", "(Re)write BATCH's manifest and print its URL."),
    "retry": ("cmd_batch", "retry", "Queue the failed items of BATCH again."),
    "cancel": ("cmd_batch", "cancel", "Cancel BATCH for good."),
    "pause": ("cmd_batch", "pause", "Hold BATCH's pending items (in-flight jobs finish)."),
    "resume": ("cmd_batch", "resume", "Continue a paused BATCH."),
    "prune": ("cmd_batch", "prune", "Drop finished batches' records from Redis now."),
    "worker": ("cmd_worker", "worker", "A Celery worker for rcbatch's tasks."),
    "simulate": ("cmd_simulate", "simulate", "The local RunComfy Model API simulator."),
    "models": ("cmd_models", "models", "The model catalogue: list, show, add."),
    "derive": ("cmd_derive", "derive", "A new batch feeding BATCH's image outputs into MODEL."),
}


class RcbatchGroup(click.Group):
    """A click group that turns our errors into one line and the right exit code.

    Its commands are loaded on first use from `COMMANDS`, so listing them costs no imports.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, in the table's order."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module on first use."""
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[cmd_name]
        module = importlib.import_module(f"rcbatch.cli.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table's one-liners (no command module imported)."""
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
@click.version_option(__version__, "-V", "--version", prog_name="rcbatch",
                      message="%(prog)s %(version)s")
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
    cli.main(args=list(argv) if argv is not None else None, prog_name="rcbatch")
