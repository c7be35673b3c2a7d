"""Measurement 1: makespan against the ideal schedule at the API's cap.

1. N jobs with durations drawn uniformly from 1-3 s, the simulator's per-token cap C, two
   worker processes. With random durations the slots free up one by one, so small delays in
   noticing an end and refilling its slot hide behind the API's queue.
1b-1d. Uniform waves, as sweeps are: N = 10 x C jobs of one fixed duration (2 s at C = 24
   and C = 100; a 30 s video wave at C = 24, run ten times faster through the simulator's
   `time_scale`). Every slot frees at once, so each wave's loss shows: for each wave, when
   the simulator finished the jobs, when rcbatch noticed, when the refills reached the
   simulator and when they started (`wave_breakdown`). rcbatch keeps 2 x C in flight, as
   the README advises for sweeps: a whole wave waits in the API's queue.
1e-1f. The same waves with C in flight (no queue) and with C + 1 s of ends (half a wave
   queued, `knobs_for`), for comparison.

The ideal is the simulator's own best schedule of those very jobs at cap C: all of them
queued at time 0 in submit order, each slot taking the next job the instant it frees
(bench/pipeline.py `ideal_makespan`). The makespan runs from handing the batch over
(register + dispatch nudge, as `rcbatch submit` does) to the last output stored in the
bucket. Every case runs RUNS times from a fresh Redis (cold: no learned durations) and
reports its median run by makespan / ideal, with the extremes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.harness import I2V, MONO_TO_WALL, T2I, Services, group_cpu
from bench.pipeline import Knobs, Outcome, RcbatchCluster, mixed_specs, t2i_specs
from bench.runner import Options, entry, save
from bench.table import Figure, Section, at_most, info, markdown_table, mean, quantile

TARGET = 1.10
#: uniform waves (issue 18): makespan / ideal and polls per job
WAVES_TARGET = 1.05
WAVES_POLLS = 3.0
#: runs of each case (this VM's speed moves a single run); the median one is reported
RUNS = 3
#: waves of a uniform case: N = WAVES x C
WAVES = 10
#: rcbatch keeps more than the API's cap in flight, so the API's own queue is never empty: a
#: freed slot starts the next queued job at once instead of idling while the end is detected
#: and a new job submitted. The extra jobs cover this many seconds of completions at the
#: cap (C x seconds / mean duration: 50 for C = 100 and 2 s jobs, 2 for C = 80 and 75 s
#: jobs); more would only wait in the API's queue, widening the times the pacer learns.
HEADROOM_SECONDS = 1.0


@dataclass(frozen=True)
class WaveCase:
    """A uniform case: `n_waves` x `cap` jobs of `model`, each `seconds` long before the
    simulator's `time_scale`."""

    title: str
    model: str
    cap: int
    seconds: float
    time_scale: float = 1.0
    n_waves: int = WAVES
    #: rcbatch's max_in_flight as a multiple of C: 2 (the default) keeps a whole wave
    #: waiting in the API's queue, so every slot a wave frees starts a queued job at once and
    #: a refill only has to reach the API within a job's time; 1 keeps only C in flight (no
    #: queue to hide a wave's hand-over); None: `knobs_for`'s HEADROOM_SECONDS, as for
    #: spread-out durations (half a wave of 2 s jobs waits, the other half of the slots
    #: wait for refills)
    in_flight: float | None = 2.0

    @property
    def duration(self) -> float:
        """A job's real duration."""
        return self.seconds * self.time_scale


WAVE_CASES = (
    WaveCase("1b. Makespan, uniform waves of 2 s, C = 24", T2I, 24, 2.0),
    WaveCase("1c. Makespan, uniform waves of 2 s, C = 100", T2I, 100, 2.0),
    WaveCase("1d. Makespan, uniform 30 s video waves (time scale 0.1), C = 24", I2V, 24,
             30.0, 0.1),
    WaveCase("1e. Makespan, uniform waves of 2 s, C = 24, max_in_flight = C", T2I, 24, 2.0,
             in_flight=1.0),
    WaveCase("1f. Makespan, uniform waves of 2 s, C = 100, max_in_flight = C + 1 s of ends",
             T2I, 100, 2.0, in_flight=None),
)
QUICK_WAVE_CASES = (WaveCase("1b. Makespan, uniform waves (quick)", T2I, 4, 0.5, n_waves=4),)


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
    """The random case, then each uniform case; each RUNS times."""
    runs = 1 if opts.quick else RUNS
    sections = [_random(svc, opts, runs)]
    for case in QUICK_WAVE_CASES if opts.quick else WAVE_CASES:
        sections.append(_waves(svc, opts, case, runs))
    return sections


# --- the random case -------------------------------------------------------------------------


def _random(svc: Services, opts: Options, runs: int) -> Section:
    n, cap = sizes(opts)
    knobs = knobs_for(cap, opts)
    outs = []
    for k in range(runs):
        sim = {"duration": [1.0, 3.0], "seed": opts.seed}
        with RcbatchCluster(svc, knobs, f"makespan-{k}") as cluster:
            outs.append(cluster.run(t2i_specs(n), cap=cap, timeout=600, sim=sim,
                                    name="makespan"))
    ranked = sorted(outs, key=_ratio)
    out = ranked[len(ranked) // 2]
    save(out, opts, "makespan")
    setup = (f"N = {n:,} text-to-image jobs, durations uniform 1-3 s, API cap C = {cap}, "
             f"{knobs.workers} worker processes x {knobs.concurrency} slots, "
             f"rcbatch max_in_flight = {knobs.max_in_flight}. {runs} run(s), the same jobs "
             f"(seed {opts.seed}): the figures are those of the median run by makespan / "
             f"ideal. Completed {out.counts['completed']:,} of {n:,}.")
    part = section(out, setup)
    part.add(*_spread(ranked))
    return part


def section(out: Outcome, setup: str) -> Section:
    """The figures of one makespan run."""
    part = Section("1. Makespan vs ideal", setup)
    latencies = [j.latency for j in out.jobs]
    part.add(at_most("makespan / ideal", _ratio(out), TARGET, "x"),
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


def _ratio(out: Outcome) -> float:
    return out.makespan / out.ideal if out.ideal else math.nan


def _spread(ranked: Sequence[Outcome]) -> list[Figure]:
    if len(ranked) < 2:
        return []
    runs, polls = len(ranked), sorted(o.polls_per_job for o in ranked)
    return [info(f"makespan / ideal, lowest of the {runs} runs", _ratio(ranked[0]), "x"),
            info(f"makespan / ideal, highest of the {runs} runs", _ratio(ranked[-1]), "x"),
            info(f"polls per job, most of the {runs} runs", polls[-1])]


def _first_submit(out: Outcome) -> float | None:
    created = [j.sim_created for j in out.jobs]
    return min(created) - out.started if created else None


# --- uniform waves ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveJob:
    """One job of a wave run, wall-clock seconds: created, started and finished at the
    simulator, noticed done by rcbatch (the poll that saw it), its output stored."""

    created: float
    started: float
    finished: float
    noticed: float
    stored: float


@dataclass(frozen=True)
class WaveRow:
    """How the slots freed by wave `wave - 1` were handed to wave `wave` (seconds).

    `queued`: slots taken at once by jobs already waiting in the API's queue; `idle`: slots
    that waited for a refill. For the idle ones (the k-th refill to reach the simulator paired
    with the k-th end rcbatch noticed), the means of each part of the wait: `detect` (job
    ended -> rcbatch noticed), `refill` (noticed -> the refill's submit reached the
    simulator), `start` (reached -> started); `idle_mean`/`idle_max`: a slot's whole wait
    (its end -> its next job started)."""

    wave: int
    ended: float
    queued: int
    idle: int
    detect: float
    refill: float
    start: float
    idle_mean: float
    idle_max: float


def wave_breakdown(jobs: Sequence[WaveJob], cap: int, origin: float = 0.0) -> list[WaveRow]:
    """Split each wave's hand-over into its parts. Wave k is the k-th `cap` jobs by start; the
    j-th start after the first `cap` took the slot the j-th end freed (slots are alike, so
    pairing the sorted lists is exact for the slots' total wait). `ended`: the median end of
    the wave before, seconds after `origin`."""
    by_start = sorted(jobs, key=lambda j: j.started)
    by_end = sorted(jobs, key=lambda j: j.finished)
    rows = []
    for wave in range(1, math.ceil(len(by_start) / cap)):
        starts = by_start[wave * cap:(wave + 1) * cap]
        freed = by_end[(wave - 1) * cap:(wave - 1) * cap + len(starts)]
        rows.append(_hand_over(wave, freed, starts, origin))
    return rows


def _hand_over(wave: int, freed: Sequence[WaveJob], starts: Sequence[WaveJob],
               origin: float) -> WaveRow:
    waits = [new.started - old.finished for old, new in zip(freed, starts, strict=True)]
    idle = sorted((new for old, new in zip(freed, starts, strict=True)
                   if new.created > old.finished), key=lambda j: j.created)
    noticed = sorted(freed, key=lambda j: j.noticed)[:len(idle)]
    pairs = list(zip(noticed, idle, strict=True))
    return WaveRow(
        wave=wave, ended=quantile([j.finished for j in freed], 0.5) - origin,
        queued=len(starts) - len(idle), idle=len(idle),
        detect=mean([old.noticed - old.finished for old, _ in pairs]),
        refill=mean([new.created - old.noticed for old, new in pairs]),
        start=mean([new.started - new.created for _, new in pairs]),
        idle_mean=mean(waits), idle_max=max(waits, default=math.nan))


def breakdown_table(rows: Sequence[WaveRow]) -> str:
    """The per-wave rows as a Markdown table."""
    head = ["wave", "prev. wave ended (median, s)", "slots from API queue", "slots refilled",
            "refilled: end -> noticed", "noticed -> submit at API", "submit -> started",
            "slot wait, mean", "slot wait, max"]
    body = [[str(r.wave), f"{r.ended:.2f}", str(r.queued), str(r.idle)]
            + [_ms(v) for v in (r.detect, r.refill, r.start, r.idle_mean, r.idle_max)]
            for r in rows]
    return markdown_table(head, body)


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


@dataclass
class WaveRun:
    """One run of a uniform case: the usual outcome and its jobs' wave timings."""

    out: Outcome
    jobs: list[WaveJob]


def _waves(svc: Services, opts: Options, case: WaveCase, runs: int) -> Section:
    knobs = knobs_for(case.cap, opts, mean_duration=case.duration)
    if case.in_flight is not None:
        knobs = replace(knobs, max_in_flight=round(case.in_flight * case.cap))
    done = [_wave_run(svc, knobs, case, opts.seed, k) for k in range(runs)]
    ranked = sorted(done, key=lambda r: _ratio(r.out))
    run = ranked[len(ranked) // 2]
    n = case.n_waves * case.cap
    setup = (f"N = {n:,} {case.model.split('/', 1)[1]} jobs of exactly "
             f"{case.seconds:g} s" + (f" x time scale {case.time_scale:g} = "
                                      f"{case.duration:g} s" if case.time_scale != 1 else "")
             + f", API cap C = {case.cap} ({case.n_waves} waves), {knobs.workers} worker "
             f"processes x {knobs.concurrency} slots, rcbatch max_in_flight = "
             f"{knobs.max_in_flight}; {runs} run(s), each from a fresh Redis: the figures "
             f"are those of the median run by makespan / ideal. Completed "
             f"{run.out.counts['completed']:,} of {n:,}.")
    part = Section(case.title, setup)
    part.add(*_wave_figures(run, case, ranked))
    part.notes.append("Per wave (the median run; times from hand-over, parts are means over "
                      "the slots that waited for a refill):\n\n"
                      + breakdown_table(wave_breakdown(run.jobs, case.cap, run.out.started)))
    return part


def _wave_figures(run: WaveRun, case: WaveCase, ranked: Sequence[WaveRun]) -> list[Figure]:
    out, latencies = run.out, [j.latency for j in run.out.jobs]
    lost = (out.makespan - out.ideal) / case.n_waves
    last_end = max((j.finished for j in run.jobs), default=math.nan)
    figures = [at_most("makespan / ideal", _ratio(out), WAVES_TARGET, "x"),
               at_most("polls per job", out.polls_per_job, WAVES_POLLS),
               info("makespan", out.makespan, "s", 1),
               info("ideal (simulator's best schedule at C)", out.ideal, "s", 1),
               info("lost per wave ((makespan - ideal) / waves)", lost, "s", 3),
               info("first submit after hand-over", _first_submit(out), "s"),
               info("first wave at the API (its C-th submit) after hand-over",
                    _wave_submitted(run, case.cap), "s"),
               info("last job ended -> its output stored", out.finished - last_end, "s"),
               info("detection latency p50", quantile(latencies, 0.5), "s"),
               info("detection latency p95", quantile(latencies, 0.95), "s")]
    if len(ranked) > 1:
        polls = sorted(r.out.polls_per_job for r in ranked)
        figures += [info(f"makespan / ideal, lowest of the {len(ranked)} runs",
                         _ratio(ranked[0].out), "x"),
                    info(f"makespan / ideal, highest of the {len(ranked)} runs",
                         _ratio(ranked[-1].out), "x"),
                    info(f"polls per job, most of the {len(ranked)} runs", polls[-1])]
    return figures


def _wave_submitted(run: WaveRun, cap: int) -> float:
    """When the cap-th job reached the simulator, seconds after hand-over."""
    created = sorted(j.created for j in run.jobs)
    return created[cap - 1] - run.out.started if len(created) >= cap else math.nan


def _wave_run(svc: Services, knobs: Knobs, case: WaveCase, seed: int, k: int) -> WaveRun:
    n = case.n_waves * case.cap
    specs = (t2i_specs(n, prefix="w", model=case.model) if case.model == T2I
             else mixed_specs(n, [case.model], svc.sim.base_url, prefix="w"))
    sim = {"duration": [case.seconds, case.seconds], "time_scale": case.time_scale,
           "seed": seed, "concurrency": case.cap}
    with RcbatchCluster(svc, knobs, f"waves-{case.cap}-{k}") as cluster:
        svc.sim.reset(**sim)
        cpu0, started = group_cpu(cluster.pgids), time.time()
        bid = cluster.submit(specs, "waves")
        cluster.wait(bid, timeout=60 + 10 * n * case.duration / case.cap)
        out = cluster.outcome(bid, started, case.cap, group_cpu(cluster.pgids) - cpu0)
        items = {i["request_id"]: i for i in cluster.store.iter_items(bid)
                 if i.get("state") == "completed" and i.get("request_id")}
    return WaveRun(out, wave_jobs(items, svc.sim.jobs()))


def wave_jobs(items: Mapping[str, Mapping[str, str]],
              sim_jobs: Sequence[Mapping[str, Any]]) -> list[WaveJob]:
    """Join rcbatch's completed items (by request id) with the simulator's jobs."""
    jobs = []
    for job in sim_jobs:
        item = items.get(job["request_id"])
        if item is None or job["finished"] is None or not item.get("remote_finished_at"):
            continue
        jobs.append(WaveJob(created=job["created"] + MONO_TO_WALL,
                            started=job["started"] + MONO_TO_WALL,
                            finished=job["finished"] + MONO_TO_WALL,
                            noticed=float(item["remote_finished_at"]),
                            stored=float(item["finished_at"])))
    return jobs


main = entry("makespan", "measurement 1: makespan / ideal at the API's cap", measure)

if __name__ == "__main__":
    raise SystemExit(main())
