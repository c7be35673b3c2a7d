"""Measurement 1: makespan against the ideal schedule at the API's cap.

N jobs with durations drawn uniformly from 1-3 s, the simulator's per-token cap C, two worker
processes. The ideal is the simulator's own best schedule of those very jobs at cap C: all of
them queued at time 0 in submit order, each slot taking the next job the instant it frees
(bench/pipeline.py `ideal_makespan`). The makespan runs from handing the batch over (register
+ dispatch nudge, as `rcbatch submit` does) to the last output stored in the bucket.
"""

from __future__ import annotations

import math
from dataclasses import replace

from bench.harness import Services
from bench.pipeline import Knobs, Outcome, RcbatchCluster, t2i_specs
from bench.runner import Options, entry, save
from bench.table import Section, at_most, info, quantile

TARGET = 1.10
#: rcbatch keeps more than the API's cap in flight, so the API's own queue is never empty: a
#: freed slot starts the next queued job at once instead of idling while the end is detected
#: and a new job submitted. The extra jobs cover this many seconds of completions at the
#: cap (C x seconds / mean duration: 50 for C = 100 and 2 s jobs, 2 for C = 80 and 75 s
#: jobs); more would only wait in the API's queue, widening the times the pacer learns.
HEADROOM_SECONDS = 1.0


def knobs_for(cap: int, opts: Options, workers: int = 2, concurrency: int = 2,
              mean_duration: float = 2.0) -> Knobs:
    """rcbatch's settings for a run at the API's cap `cap` with jobs of `mean_duration` s."""
    extra = math.ceil(cap * HEADROOM_SECONDS / mean_duration)
    knobs = Knobs(workers=workers, concurrency=concurrency, max_in_flight=cap + extra)
    if opts.profile:
        knobs = replace(knobs, profile_dir=str(opts.profile))
    return knobs


def sizes(opts: Options) -> tuple[int, int]:
    """(N, C): the issue's 2,000 at cap 100, or a quick 40 at cap 20."""
    return (40, 20) if opts.quick else (2000, 100)


def measure(svc: Services, opts: Options) -> list[Section]:
    """Run the batch once and report makespan / ideal."""
    n, cap = sizes(opts)
    knobs = knobs_for(cap, opts)
    sim = {"duration": [1.0, 3.0], "seed": opts.seed}
    with RcbatchCluster(svc, knobs, "makespan") as cluster:
        out = cluster.run(t2i_specs(n), cap=cap, timeout=600, sim=sim, name="makespan")
    save(out, opts, "makespan")
    setup = (f"N = {n:,} text-to-image jobs, durations uniform 1-3 s, API cap C = {cap}, "
             f"{knobs.workers} worker processes x {knobs.concurrency} slots, "
             f"rcbatch max_in_flight = {knobs.max_in_flight}. "
             f"Completed {out.counts['completed']:,} of {n:,}.")
    return [section(out, setup)]


def section(out: Outcome, setup: str) -> Section:
    """The figures of one makespan run."""
    part = Section("1. Makespan vs ideal", setup)
    latencies = [j.latency for j in out.jobs]
    ratio = out.makespan / out.ideal if out.ideal else None
    part.add(at_most("makespan / ideal", ratio, TARGET, "x"),
             info("makespan", out.makespan, "s", 1),
             info("ideal (simulator's best schedule at C)", out.ideal, "s", 1),
             info("throughput", len(out.jobs) / out.makespan if out.makespan else None,
                  "jobs/s", 1),
             info("first submit after hand-over", _first_submit(out), "s"),
             info("polls per job", out.polls_per_job),
             info("detection latency p50", quantile(latencies, 0.5), "s"),
             info("detection latency p95", quantile(latencies, 0.95), "s"),
             info("worker CPU per job", out.worker_cpu / max(1, len(out.jobs)) * 1000, "ms", 1))
    return part


def _first_submit(out: Outcome) -> float | None:
    created = [j.sim_created for j in out.jobs]
    return min(created) - out.started if created else None


main = entry("makespan", "measurement 1: makespan / ideal at the API's cap", measure)

if __name__ == "__main__":
    raise SystemExit(main())
