"""Live progress of a batch: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rcbatch.cli.outcome import stopped_early
from rcbatch.worker import keys
from rcbatch.worker.state import Store

TERMINAL = keys.PUBLIC_TERMINAL


def batch_state(record: dict[str, str], counts: dict[str, int]) -> str:
    """The CONTRACT's batch state: scheduled, running, finished or cancelled."""
    total = int(record.get("total", 0))
    if record.get("state") == keys.BATCH_CANCELLED and sum(counts[s] for s in TERMINAL) >= total:
        return "cancelled"
    if record.get("state") == keys.BATCH_SCHEDULED:
        return "scheduled"
    if sum(counts[s] for s in TERMINAL) >= total:
        return "finished"
    return "cancelled" if record.get("state") == keys.BATCH_CANCELLED else "running"


def summary(counts: dict[str, int]) -> str:
    """`completed 3 · running 2 · ...`, leaving out zero counts."""
    parts = [f"{state} {counts[state]}" for state in keys.PUBLIC_STATES if counts.get(state)]
    return " · ".join(parts) or "no items"


def follow(store: Store, bid: str, *, stream: TextIO | None = None, interval: float = 0.5,
           tick: Callable[[], None] | None = None, timeout: float | None = None) -> dict[str, int]:
    """Show progress until every item is terminal, or the batch is paused and will not move
    by itself (`outcome.stopped_early`), or `timeout`; returns the last counts.

    `tick` runs on every refresh (the `run` command supervises its processes there).
    """
    stream = stream or sys.stderr
    view: _View = _BarView(stream) if stream.isatty() else _LineView(stream)
    deadline = None if timeout is None else time.monotonic() + timeout
    with view:
        while True:
            record = store.batch(bid) or {}
            counts = store.counts(bid)
            view.update(int(record.get("total", 0)), counts)
            total = int(record.get("total", 0))
            # a cancelled batch is followed too until its paid-for jobs have ended
            if sum(counts[s] for s in TERMINAL) >= total or stopped_early(store, bid, record,
                                                                           counts):
                return counts
            if deadline is not None and time.monotonic() > deadline:
                return counts
            if tick:
                tick()
            time.sleep(interval)


class _View:
    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, total: int, counts: dict[str, int]) -> None:
        raise NotImplementedError


class _BarView(_View):
    """A rich bar with counts per state, rate and ETA."""

    def __init__(self, stream: TextIO) -> None:
        # rich costs a tenth of a second to import: only a terminal that shows the bar pays it
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(file=stream), transient=False)
        self.task = self.progress.add_task("batch", total=None, states="", rate="")
        self.started = time.monotonic()

    def __enter__(self) -> _View:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, total: int, counts: dict[str, int]) -> None:
        done = sum(counts[s] for s in TERMINAL)
        elapsed = time.monotonic() - self.started
        rate = f"{done / elapsed:.1f}/s" if elapsed >= 1 else ""
        self.progress.update(self.task, total=total, completed=done, states=summary(counts),
                             rate=rate)


class _LineView(_View):
    """A plain line whenever the counts change (at most every 5 s), for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""
        self.last_at = 0.0
        self.started = time.monotonic()

    def update(self, total: int, counts: dict[str, int]) -> None:
        done = sum(counts[s] for s in TERMINAL)
        line = f"{done}/{total} done: {summary(counts)}"
        now = time.monotonic()
        if line != self.last and (now - self.last_at >= 5 or done == total):
            elapsed = now - self.started
            rate = f" ({done / elapsed:.1f} items/s)" if elapsed >= 1 else ""
            self.stream.write(f"[{elapsed:7.1f}s] {line}{rate}\n")
            self.stream.flush()
            self.last, self.last_at = line, now
