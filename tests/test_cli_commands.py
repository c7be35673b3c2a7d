"""The command table `rcbatch --help` is drawn from matches the commands that exist."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from rcbatch import __version__
from rcbatch.cli import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_loads_and_has_help(name: str) -> None:
    done = CliRunner().invoke(cli, [name, "--help"])
    assert done.exit_code == 0, done.output
    assert "Usage: " in done.output and name in done.output


def test_help_lists_every_command_without_importing_them() -> None:
    probe = ("import sys; from rcbatch.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('rcbatch.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    for name in COMMANDS:
        assert f"  {name} " in done.stdout
    loaded = done.stdout.strip().splitlines()[-1]
    assert "rcbatch.cli.cmd_" not in loaded and "rcbatch.worker" not in loaded


def test_version() -> None:
    done = CliRunner().invoke(cli, ["--version"])
    assert done.output.strip() == f"rcbatch {__version__}"
