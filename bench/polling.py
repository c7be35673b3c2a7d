"""Measurement 3: polls per job and detection latency (job finished at the simulator -> output
stored), with image-like durations (1-3 s) and with a video-like mix (30-120 s).

The video-like mix gives each of the four models its own range (30-45, 45-65, 65-90 and
90-120 s), as real models differ, and interleaves them in the batch. rcbatch learns each
model's durations as the batch runs; its first jobs of each model have no history yet. The
bar for latency is per job: within 10 % of the job's duration + 0.5 s, at p95. A polls figure
is API requests (status + result) at the simulator per completed job.
"""

from __future__ import annotations

import math
from collections import defaultdict

from bench.harness import EDIT, I2V, SEQ, T2I, Services
from bench.makespan import knobs_for
from bench.pipeline import Outcome, RcbatchCluster, mixed_specs, t2i_specs
from bench.runner import Options, entry, save
from bench.table import Figure, Section, at_most, info, mean, quantile

#: runs of the image-like scenario (its p95 latency varies a lot from run to run)
IMAGE_RUNS = 3
#: (model, seconds) of the video-like mix
VIDEO_MIX = ((T2I, (30.0, 45.0)), (EDIT, (45.0, 65.0)), (SEQ, (65.0, 90.0)),
             (I2V, (90.0, 120.0)))


def bound(duration: float) -> float:
    """The latency bar of one job: 10 % of its duration + 0.5 s."""
    return 0.1 * duration + 0.5


def measure(svc: Services, opts: Options) -> list[Section]:
    """The image-like run, then the video-like run."""
    return [_images(svc, opts), _videos(svc, opts)]


def _images(svc: Services, opts: Options) -> Section:
    n, cap = (20, 10) if opts.quick else (1000, 100)
    runs = 1 if opts.quick else IMAGE_RUNS
    knobs = knobs_for(cap, opts)
    outs = []
    for k in range(runs):  # each run from a fresh Redis: cold again
        sim = {"duration": [1.0, 3.0], "seed": opts.seed + k}
        with RcbatchCluster(svc, knobs, f"polling-images-{k}") as cluster:
            outs.append(cluster.run(t2i_specs(n, prefix="i"), cap=cap, timeout=600, sim=sim,
                                    name="polling-images"))
    ranked = sorted(outs, key=_p95_ratio)
    out = ranked[len(ranked) // 2]
    save(out, opts, "polling-images")
    setup = (f"N = {n:,} text-to-image jobs, durations uniform 1-3 s, API cap C = {cap}, "
             f"{knobs.workers} workers x {knobs.concurrency} slots, max_in_flight "
             f"{knobs.max_in_flight}; a fresh Redis (no learned durations at the start). "
             f"{runs} run(s) with seeds {opts.seed}..{opts.seed + runs - 1}: the figures are "
             "those of the median run by p95 latency (a single run's p95 varies a lot here).")
    part = Section("3a. Polling, image-like durations (1-3 s)", setup)
    part.add(*_figures(out, 3.0))
    if runs > 1:
        polls = sorted(o.polls_per_job for o in outs)
        part.add(info(f"p95 latency / bar, best of the {runs} runs", _p95_ratio(ranked[0]), "x"),
                 info(f"p95 latency / bar, worst of the {runs} runs", _p95_ratio(ranked[-1]),
                      "x"),
                 info(f"polls per job, fewest of the {runs} runs", polls[0]),
                 info(f"polls per job, most of the {runs} runs", polls[-1]))
    part.add(*_cold_and_warm(out))
    return part


def _ratios(out: Outcome) -> list[float]:
    """Each job's detection latency over its bar."""
    return [j.latency / bound(j.duration) for j in out.jobs]


def _p95_ratio(out: Outcome) -> float:
    return quantile(_ratios(out), 0.95)


def _videos(svc: Services, opts: Options) -> Section:
    scale = 0.04 if opts.quick else 1.0
    n, cap = (16, 8) if opts.quick else (240, 80)
    knobs = knobs_for(cap, opts, mean_duration=75 * scale)
    models = [m for m, _ in VIDEO_MIX]
    sim = {"model_durations": {m: [lo * scale, hi * scale] for m, (lo, hi) in VIDEO_MIX},
           "seed": opts.seed}
    with RcbatchCluster(svc, knobs, "polling-videos") as cluster:
        out = cluster.run(mixed_specs(n, models, svc.sim.base_url, prefix="v"), cap=cap,
                          timeout=1200, sim=sim, name="polling-videos")
    save(out, opts, "polling-videos")
    ranges = ", ".join(f"{m.split('/', 1)[1]} {lo * scale:g}-{hi * scale:g} s"
                       for m, (lo, hi) in VIDEO_MIX)
    setup = (f"N = {n} jobs over four models ({ranges}), interleaved; API cap C = {cap}, "
             f"{knobs.workers} workers x {knobs.concurrency} slots, max_in_flight "
             f"{knobs.max_in_flight}. N is chosen so the run takes about 5 minutes (N / C = "
             f"{n / cap:g} waves), so the jobs submitted before their model's first job ended "
             "(no duration known yet; split out below) are a large share of the batch."
             + (f" QUICK: durations scaled by {scale:g}." if opts.quick else ""))
    part = Section("3b. Polling, video-like mix (30-120 s)", setup)
    part.add(*_figures(out, 4.0))
    part.add(*_cold_and_warm(out))
    part.add(*_per_model(out))
    return part


def _figures(out: Outcome, polls_target: float) -> list[Figure]:
    latencies = [j.latency for j in out.jobs]
    over = _ratios(out)
    within = sum(1 for x in over if x <= 1.0) / len(over) if over else math.nan
    return [at_most("polls per job (API requests / completed job)", out.polls_per_job,
                    polls_target),
            at_most("p95 of latency / (10 % of duration + 0.5 s)", _p95_ratio(out), 1.0,
                    "x"),
            info("jobs within their latency bar", within * 100, "%", 1),
            info("detection latency p50", quantile(latencies, 0.5), "s"),
            info("detection latency p95", quantile(latencies, 0.95), "s"),
            info("completed jobs", len(out.jobs), "", 0),
            info("makespan", out.makespan, "s", 1)]


def _cold_and_warm(out: Outcome) -> list[Figure]:
    """The jobs submitted before their model's first job was stored (no duration known yet)
    apart from the others."""
    timed: dict[str, float] = {}
    for job in out.jobs:
        timed[job.model] = min(timed.get(job.model, math.inf), job.stored)
    figures = []
    for name, cold in (("submitted before their model was timed", True),
                       ("submitted after", False)):
        jobs = [j for j in out.jobs if (j.sim_created < timed[j.model]) == cold]
        ratios = [j.latency / bound(j.duration) for j in jobs]
        figures += [info(f"{name}: jobs", len(jobs), "", 0),
                    info(f"{name}: polls per job", mean([j.polls for j in jobs])),
                    info(f"{name}: p95 latency / bar", quantile(ratios, 0.95), "x")]
    return figures


def _per_model(out: Outcome) -> list[Figure]:
    by_model: dict[str, list[float]] = defaultdict(list)
    for job in out.jobs:
        by_model[job.model].append(job.latency / bound(job.duration))
    polls: dict[str, list[int]] = defaultdict(list)
    for job in out.jobs:
        polls[job.model].append(job.polls)
    figures = []
    for model, ratios in sorted(by_model.items()):
        name = model.split("/", 1)[1]
        figures += [info(f"{name}: polls per job", mean(polls[model])),
                    info(f"{name}: p95 latency / bar", quantile(ratios, 0.95), "x")]
    return figures


main = entry("polling", "measurement 3: polls per job and detection latency", measure)

if __name__ == "__main__":
    raise SystemExit(main())
