"""The benchmarks run: `python -m bench all --quick` prints every benchmark's table.

Figures are not checked (they depend on the machine); only that each benchmark runs to the
end and prints a Markdown table, that measurements 1-4 show a measured figure with its target
and verdict beside it, and that the run ends with the summary of targets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: measurement -> a figure its table must show with a target
TARGETED = {
    "makespan": "| makespan / ideal |",
    "peers": "| rcbatch speed / naive Celery poller |",
    "polling": "| polls per job (API requests / completed job) |",
    "overhead": "| rcbatch completed jobs/s |",
}
OTHERS = ("enqueue", "streaming", "scale")


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    """One `python -m bench all --quick` for the whole module."""
    return subprocess.run([sys.executable, "-m", "bench", "all", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def sections(out: str) -> dict[str, str]:
    """The output of each benchmark, by name (split at its `## bench NAME` heading)."""
    parts = out.split("\n## bench ")[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def test_every_benchmark_runs_and_prints_a_table(
        quick_run: subprocess.CompletedProcess[str]) -> None:
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    printed = sections(quick_run.stdout)
    for name in (*TARGETED, *OTHERS):
        assert name in printed, f"no output from {name}"
        assert "| --- |" in printed[name], printed[name]


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_each_measurement_shows_its_figure_beside_its_target(
        quick_run: subprocess.CompletedProcess[str], name: str) -> None:
    out = sections(quick_run.stdout).get(name, "")
    row = next((line for line in out.splitlines() if line.startswith(TARGETED[name])), "")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4, out
    assert cells[1] not in ("", "n/a"), row  # a figure was measured
    assert cells[2].startswith((">=", "<=")), row  # its target is beside it
    assert cells[3] in ("met", "MISSED"), row


def test_the_run_ends_with_a_summary_of_every_target(
        quick_run: subprocess.CompletedProcess[str]) -> None:
    summary = quick_run.stdout.split("## Summary of targets", 1)[-1]
    for title in ("1. Makespan vs ideal", "2. Peers", "3a. Polling", "3b. Polling",
                  "4. Overhead ceiling"):
        assert f"| {title}" in summary, summary


def test_bench_lists_the_benchmarks_by_name() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for name in (*TARGETED, *OTHERS, "chaos"):
        assert f"  {name} " in done.stdout
