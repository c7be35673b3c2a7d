"""What every benchmark module shares: its command line, its services, and printing its table.

A benchmark module defines `measure(svc, opts) -> list[Section]` and
`main = entry("name", "what it measures", measure)`; `python -m bench.NAME [--quick]` then
starts the bench Redis and simulator, measures, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.harness import Services, machine
from bench.table import Section, markdown

#: every section printed in this process, in order (`python -m bench all` sums them up)
PRINTED: list[Section] = []


@dataclass(frozen=True)
class Options:
    """The shared options of every benchmark."""

    quick: bool = False
    keep: Path | None = None
    profile: Path | None = None
    seed: int = 7


Measure = Callable[[Services, Options], list[Section]]


class Main(Protocol):
    """A benchmark's entry point: `main(argv) -> exit status`."""

    def __call__(self, argv: list[str] | None = None) -> int:
        """Run with these arguments (None: sys.argv[1:])."""


def parser(name: str, about: str) -> argparse.ArgumentParser:
    """The shared command line of `python -m bench.NAME`."""
    parse = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=about)
    parse.add_argument("--quick", action="store_true",
                       help="trivial sizes: checks that it runs, the figures mean little")
    parse.add_argument("--keep", type=Path, metavar="DIR",
                       help="keep the scratch folder (Redis data, worker logs) in DIR")
    parse.add_argument("--profile", type=Path, metavar="DIR",
                       help="sample every rcbatch worker process with py-spy into DIR")
    parse.add_argument("--seed", type=int, default=7, help="the simulator's seed")
    return parse


def entry(name: str, about: str, measure: Measure) -> Main:
    """A `main(argv) -> int` that parses the shared options, measures and prints."""

    def main(argv: list[str] | None = None) -> int:
        args = parser(name, about).parse_args(sys.argv[1:] if argv is None else argv)
        opts = Options(quick=args.quick, keep=args.keep, profile=args.profile, seed=args.seed)
        started = time.monotonic()
        with Services(keep=opts.keep) as svc:
            sections = measure(svc, opts)
        conclude(name, sections, started=started, quick=opts.quick, profile=opts.profile)
        return 0

    main.__doc__ = f"`python -m bench.{name}`: {about}"
    return main


def save(out: Any, opts: Options, name: str) -> None:
    """With --keep, write a run's jobs to KEEP/NAME-jobs.csv (an Outcome's `save`)."""
    if opts.keep is not None:
        out.save(opts.keep / f"{name}-jobs.csv")


def conclude(name: str, sections: list[Section], *, started: float, quick: bool,
             profile: Path | None) -> None:
    """Print a benchmark's tables with its footer (time taken, machine), then, after a
    `--profile` run, write the py-spy reports."""
    show(sections, f"{name}{' --quick' if quick else ''}: "
                   f"{time.monotonic() - started:.0f} s on {machine()}")
    if profile is not None:
        write_profile_reports(profile)


def write_profile_reports(folder: Path) -> None:
    """Write a report of each cluster's py-spy samples (`folder/CLUSTER/report.txt`)."""
    from bench.profiling import write_report

    for cluster in sorted(p for p in folder.iterdir() if p.is_dir()):
        print(f"_worker samples (py-spy): {write_report(cluster)}_", flush=True)


def show(sections: list[Section], footer: str) -> None:
    """Print the sections' tables (and remember them for a summary)."""
    PRINTED.extend(sections)
    print(markdown(sections) + f"\n_{footer}_\n", flush=True)
