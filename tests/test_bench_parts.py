"""The parts of benchmarks 1 and 5-7 (bench/makespan.py, enqueue.py, streaming.py, scale.py)
that compute figures, and the report of py-spy samples (bench/profiling.py).

The benchmarks themselves run for minutes; these check, fast, that what they compare is
comparable (the raw baseline writes what rcbatch writes) and that their arithmetic holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from bench.enqueue import RAW_SCRIPT, run_child, write_rows
from bench.makespan import WaveJob, breakdown_table, wave_breakdown, wave_jobs
from bench.pipeline import Knobs
from bench.profiling import report
from bench.scale import Run, Sample
from bench.streaming import Stream, Target, figures
from rcbatch.producer.batch import register_batch
from rcbatch.producer.spec import read_and_check
from rcbatch.worker import keys
from rcbatch.worker.state import Store


def test_generated_rows_are_valid_distinct_items(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "rows.jsonl", 50)
    checked = read_and_check([path])
    assert checked.problems == []
    assert len({item.item_id for item in checked.items}) == 50


def test_raw_baseline_writes_the_record_rcbatch_writes(redis_url: str, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "rows.jsonl", 3)
    raw = run_child([sys.executable, "-c", RAW_SCRIPT, redis_url, str(path)], {})
    assert raw.stdout.strip() == "3"
    store = Store(redis.Redis.from_url(redis_url))
    reg = register_batch(store, read_and_check([path]).items, name="n", bucket_url="file:///b",
                         sources=[str(path)])
    ours = store.item(reg.batch_id, store.item_ids(reg.batch_id)[0]) or {}
    theirs = {k.decode() for k in store.redis.hkeys("raw:item:raw-1")}
    assert theirs == set(ours)
    assert store.redis.llen("raw:pending") == store.redis.llen(keys.pending(reg.batch_id))


def test_run_child_reports_its_own_peak_memory_and_failures() -> None:
    big = run_child([sys.executable, "-c", "x = bytearray(96 * 1024 * 1024); print(len(x))"], {})
    assert big.peak_rss >= 96 * 1024 * 1024
    assert big.stdout.strip() == str(96 * 1024 * 1024)
    with pytest.raises(RuntimeError, match="exited 3"):
        run_child([sys.executable, "-c", "import sys; sys.exit(3)"], {})


def _sample(used: int, terminal: int, *, queued: int = 0, live: int = 0) -> Sample:
    return Sample(t=0.0, used=used, queued=queued, unacked=0, inflight=0, due=0, pending=0,
                  terminal=terminal, live=live)


def test_scale_residual_is_the_memory_item_records_do_not_explain() -> None:
    base, items = 10_000, 100
    run = Run(items=items, knobs=Knobs(), base=base, registered=base + items * 500,
              end=base + items * 800, seconds=1.0, worker_cpu=0.0, pending_record=0,
              finished_record=0)
    halfway = _sample(base + items * 500 + 50 * 300 + 4096, terminal=50)
    assert run.per_registered == 500
    assert run.per_finished == 800
    assert run.residual(halfway) == 4096
    assert run.residual(_sample(run.end, terminal=items)) == 0


def test_scale_counts_queued_and_unacked_messages_as_outstanding() -> None:
    run = Run(items=10, knobs=Knobs(), base=0, registered=0, end=0, seconds=1.0,
              worker_cpu=0.0, pending_record=0, finished_record=0,
              samples=[_sample(0, 0, queued=3), _sample(0, 0, queued=7)])
    assert run.max_outstanding() == 7


def test_streaming_share_is_held_against_the_plain_download() -> None:
    target = Target("local", "local", "file:///b", lambda size: 1.0)
    stream = Stream(target, size=1024 * 1024 * 100, seconds=2.0, growth=0, main_growth=0,
                    worker_cpu=0.0, server_cpu=0.0, plain_seconds=1.0,
                    plain_async_seconds=1.0, ceiling_seconds=1.5, tail=None)
    shown = {f.name: f for f in figures(stream)}
    share = shown["local: throughput / plain download"]
    assert share.value == pytest.approx(50.0)
    assert share.ok is True
    # against the slower of the download (100 MiB/s) and the store alone (66.7 MiB/s)
    assert shown["local: throughput / min(plain download, store ceiling)"].value == \
        pytest.approx(75.0)


def test_profile_report_tells_wall_and_cpu_samples_apart(tmp_path: Path) -> None:
    main = 'process 1:"rcbatch worker"'
    child = f'{main};process 2:"rcbatch worker"'
    poll = "poll (worker/polling.py:40)"
    (tmp_path / "spy-0.txt").write_text(
        f"{child};{poll};_read_from_socket (redis/_parsers/socket.py:65) 6\n"
        f"{child};{poll};send (httpx/_client.py:1) 2\n"
        f"{main};poll (kombu/utils/eventio.py:83) 2\n")
    (tmp_path / "gil-0.txt").write_text(f"{child};{poll};send (httpx/_client.py:1) 3\n"
                                        f"{main};on_readable (worker/broker.py:36) 1\n")
    wall, cpu = report(tmp_path).split("=== samples of ")[1:]
    assert wall.startswith("every running thread")
    assert "10 samples" in wall and "main processes 20%, pool children 80%" in wall
    assert " 60.0%  redis-py" in wall and " 80.0%  poll step" in wall
    assert cpu.startswith("only the thread holding the GIL")
    assert "4 samples" in cpu and " 0.0%  redis-py" in cpu and " 75.0%  poll step" in cpu


def _job(created: float, started: float, finished: float, noticed: float) -> WaveJob:
    return WaveJob(created=created, started=started, finished=finished, noticed=noticed,
                   stored=noticed + 0.01)


def test_wave_breakdown_splits_each_slot_wait_into_its_parts() -> None:
    jobs = [_job(0.0, 0.0, 2.0, 2.1), _job(0.0, 0.0, 2.0, 2.2),
            # wave 1: both slots refilled, 0.2 s after each end was noticed
            _job(2.3, 2.3, 4.3, 4.35), _job(2.4, 2.4, 4.4, 4.5),
            # wave 2: one job was already waiting in the API's queue, one refill
            _job(1.0, 4.3, 6.3, 6.4), _job(4.6, 4.6, 6.6, 6.7)]
    first, second = wave_breakdown(jobs, cap=2)
    assert (first.wave, first.queued, first.idle) == (1, 0, 2)
    assert first.detect == pytest.approx(0.15)  # ended 2.0, noticed 2.1 and 2.2
    assert first.refill == pytest.approx(0.2)
    assert first.start == pytest.approx(0.0)
    assert first.idle_mean == pytest.approx(0.35) and first.idle_max == pytest.approx(0.4)
    assert (second.queued, second.idle) == (1, 1)
    # the refill pairs with the first end noticed (4.35), its slot waited 4.4 -> 4.6
    assert second.detect == pytest.approx(0.05) and second.refill == pytest.approx(0.25)
    assert second.idle_mean == pytest.approx((0.0 + 0.2) / 2)
    assert "| 2 | 4.35 | 1 | 1 |" in breakdown_table([first, second])


def test_wave_jobs_join_completed_items_with_the_simulators_jobs() -> None:
    items = {"r1": {"remote_finished_at": "12.5", "finished_at": "12.6"},
             "r2": {"finished_at": "13.0"}}  # never noticed by a poll: left out
    sim = [{"request_id": "r1", "created": 1.0, "started": 1.0, "finished": 3.0},
           {"request_id": "r2", "created": 1.0, "started": 1.0, "finished": 3.0},
           {"request_id": "r3", "created": 1.0, "started": 1.0, "finished": None}]
    (job,) = wave_jobs(items, sim)
    assert job.noticed == 12.5 and job.stored == 12.6
    assert job.finished - job.created == pytest.approx(2.0)
