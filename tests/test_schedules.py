"""Recurring runs: a doubled trigger starts one run; a missed firing runs once, and says so."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pytest
import structlog

from rcbatch.cli.schedule import parse_when
from rcbatch.errors import InputError
from rcbatch.worker.schedules import Schedule, fire_due, latest_firing, load_schedules

NIGHTLY = Schedule("nightly", "0 2 * * *", "/specs/n.jsonl")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Runs:
    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, schedule: Schedule, name: str) -> str:
        self.names.append(name)
        return f"batch-{len(self.names)}"


def test_latest_firing_is_the_previous_cron_time() -> None:
    assert latest_firing(NIGHTLY, ts("2026-11-23T01:05:00")) == ts("2026-11-22T02:00:00")


def test_a_doubled_trigger_starts_one_run() -> None:
    redis, runs, log = fakeredis.FakeRedis(), Runs(), structlog.get_logger()
    fire_due(redis, [NIGHTLY], ts("2026-11-20T12:00:00"), runs, log)  # first seen
    at = ts("2026-11-21T02:00:10")
    fire_due(redis, [NIGHTLY], at, runs, log)
    fire_due(redis, [NIGHTLY], at + 1, runs, log)  # a second beat, a retried task
    assert runs.names == ["nightly-20261121T020000Z"]


def test_a_firing_missed_while_down_runs_once_on_start_with_a_log_line() -> None:
    redis, runs = fakeredis.FakeRedis(), Runs()
    fire_due(redis, [NIGHTLY], ts("2026-11-20T12:00:00"), runs, structlog.get_logger())
    with structlog.testing.capture_logs() as events:
        # Down from before 02:00 until 07:30: the 02:00 firing runs once, late.
        fire_due(redis, [NIGHTLY], ts("2026-11-21T07:30:00"), runs, structlog.get_logger())
        fire_due(redis, [NIGHTLY], ts("2026-11-21T07:31:00"), runs, structlog.get_logger())
    assert runs.names == ["nightly-20261121T020000Z"]
    missed = [e for e in events if e["event"] == "schedule_missed_firing_run_now"]
    assert len(missed) == 1 and missed[0]["schedule"] == "nightly"


def test_firings_before_the_schedule_was_known_are_not_run() -> None:
    redis, runs = fakeredis.FakeRedis(), Runs()
    fire_due(redis, [NIGHTLY], ts("2026-11-21T14:00:00"), runs, structlog.get_logger())
    assert runs.names == []


def test_schedules_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"name": "a", "cron": "0 2 * * *", "spec": "x.jsonl"},
                                {"name": "b", "cron": "every day", "spec": "y.jsonl"}]))
    with pytest.raises(InputError, match="entry 2: invalid cron"):
        load_schedules(path)


def test_at_accepts_clock_times_and_iso() -> None:
    now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert parse_when("02:00", now) == ts("2026-11-23T02:00:00")
    assert parse_when("00:30", now) == ts("2026-11-24T00:30:00")
    assert parse_when("2026-12-01T03:00:00+00:00", now) == ts("2026-12-01T03:00:00")
    with pytest.raises(InputError):
        parse_when("tomorrow", now)


def test_two_beats_firing_together_register_one_batch(redis_url: str, tmp_path: Path) -> None:
    """Real Redis, the real registration path, two 'beats' racing in threads."""
    import threading

    from rcbatch.config import Settings
    from rcbatch.runcomfy.fake import FakeRunComfy
    from rcbatch.worker.bucket import MemoryBucket
    from rcbatch.worker.runtime import RecordingPublisher, Runtime
    from rcbatch.worker.schedule_tasks import fire_schedules
    from rcbatch.worker.state import Store
    from rcbatch.worker.wiring import redis_client

    spec = tmp_path / "nightly.jsonl"
    spec.write_text('{"model": "bytedance/dreamina-4-0/text-to-image", "prompt": "x"}\n')
    sched = tmp_path / "schedules.json"
    sched.write_text(json.dumps([{"name": "nightly", "cron": "* * * * *", "spec": str(spec)}]))
    settings = Settings(redis_url=redis_url, schedules_file=sched, state_dir=tmp_path)
    store = Store(redis_client(redis_url))
    first_seen = datetime.now(UTC).timestamp() - 120  # the schedule has been known a while
    store.redis.set("rcb:schedule:nightly:since", str(first_seen))
    started: list[str] = []

    def beat() -> None:
        rt = Runtime(store=Store(redis_client(redis_url)), client=FakeRunComfy().client(),
                     buckets=lambda _u: MemoryBucket(), publisher=RecordingPublisher())
        started.extend(fire_schedules(rt, settings))

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(started) == 1
    assert store.all_batches() == started
    assert store.counts(started[0])["pending"] == 1
