"""Recurring runs: cron entries from configuration, fired by Celery beat, each firing once.

A schedules file (RCBATCH_SCHEDULES_FILE, JSON) lists entries such as

    [{"name": "nightly", "cron": "0 2 * * *", "spec": "/data/nightly.jsonl"},
     {"name": "hourly-edit", "cron": "0 * * * *", "spec": "s3://specs/edit.csv"}]

Beat runs `fire_due` every 30 s. Each firing has a run key, `rcb:schedule:{name}:{time}`,
taken with SET NX: a doubled trigger (two beats, a retried task) starts one run. The latest
firing that passed while everything was down runs once when things come back, with a log line
saying so; older missed firings are not replayed (one catch-up run, not a flood).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from croniter import croniter

from rcbatch.errors import InputError
from rcbatch.worker import keys

#: a firing this much older than "now" counts as missed (beat runs every 30 s)
LATE_AFTER = 90.0


@dataclass(frozen=True)
class Schedule:
    """One recurring run: a cron expression and the spec it submits."""

    name: str
    cron: str
    spec: str


def load_schedules(path: Path) -> list[Schedule]:
    """Read and check a schedules file; InputError names the entry that is wrong."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read schedules: {exc}") from exc
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a JSON list of schedules")
    out = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("name", "cron", "spec")):
            raise InputError(f"{path}: entry {n}: needs string fields name, cron and spec")
        if not croniter.is_valid(entry["cron"]):
            raise InputError(f"{path}: entry {n}: invalid cron expression {entry['cron']!r}")
        out.append(Schedule(entry["name"], entry["cron"], entry["spec"]))
    return out


def latest_firing(schedule: Schedule, now: float) -> float:
    """The most recent time at or before `now` when the schedule fires."""
    start = datetime.fromtimestamp(now, tz=UTC)
    return float(croniter(schedule.cron, start).get_prev(datetime).timestamp())


def fire_due(redis: Any, schedules: Sequence[Schedule], now: float,
             start_run: Callable[[Schedule, str], str], log: Any) -> list[str]:
    """Start every firing that is due and not yet started; returns the new batch ids."""
    started = []
    for schedule in schedules:
        since_key = keys.schedule_since(schedule.name)
        redis.set(since_key, str(now), nx=True)
        since = float(redis.get(since_key))
        fired_at = latest_firing(schedule, now)
        if fired_at < since:
            continue  # fired before this schedule was known: not ours to run
        stamp = datetime.fromtimestamp(fired_at, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        run_key = keys.schedule_run(schedule.name, stamp)
        if not redis.set(run_key, str(now), nx=True, ex=40 * 86400):
            continue
        if now - fired_at > LATE_AFTER:
            log.warning("schedule_missed_firing_run_now", schedule=schedule.name,
                        fired_at=stamp, late_by=round(now - fired_at))
        started.append(start_run(schedule, f"{schedule.name}-{stamp}"))
    return started


@contextmanager
def spec_file(spec: str, open_bucket: Callable[[str], Any]) -> Iterator[Path]:
    """A local path for a spec given as a path or as a bucket URL; a downloaded copy lives in
    a temp file only while the block runs (a nightly schedule must not fill /tmp)."""
    if "://" not in spec or spec.startswith("file://"):
        yield Path(spec.removeprefix("file://"))
        return
    folder, _, name = spec.rpartition("/")
    data = open_bucket(folder).get_bytes(name)
    suffix = Path(name).suffix or ".jsonl"
    with tempfile.NamedTemporaryFile("wb", suffix=suffix) as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)
