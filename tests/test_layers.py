"""The import graph points down and has no circles (the contracts in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_down_and_no_module_imports_itself_in_a_circle() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "BROKEN" not in done.stdout


def test_no_module_is_imported_by_its_folder_name() -> None:
    """`worker.state` and `rcbatch.worker.state` would be two modules with two states."""
    stray = subprocess.run(
        ["git", "grep", "-nE", r"^\s*(from|import) (config|worker|producer|runcomfy)\b", "--",
         "*.py"], cwd=ROOT, capture_output=True, text=True)
    assert stray.stdout == ""
