"""Measurement 2: rcbatch against its peers in the same run, with the same worker slots.

The same N jobs (durations 1-3 s, API cap C) run three times against a freshly reset
simulator with the same seed (so the same durations):
- rcbatch: 2 worker processes x 2 slots;
- (a) the naive Celery poller (bench/naive_celery.py): 2 worker processes x 2 slots, each
  job holding a slot while it sleeps 2 s between polls (RunComfy's CLI interval);
- (b) the single-process asyncio poller (bench/asyncio_poller.py): as many jobs in flight as
  rcbatch's max_in_flight, polling every 1 s, no durability.
The naive poller cannot run 2,000 jobs in reasonable time, so all three run a smaller N.
"""

from __future__ import annotations

from bench import asyncio_poller, naive_celery
from bench.harness import Services
from bench.makespan import knobs_for
from bench.pipeline import Outcome, RcbatchCluster, t2i_specs
from bench.runner import Options, entry, save
from bench.table import Figure, Section, at_least, info, quantile, ratio

SPEEDUP = 5.0


def sizes(opts: Options) -> tuple[int, int]:
    """(N, C): 200 jobs at cap 100, or a quick 4 at cap 4."""
    return (4, 4) if opts.quick else (200, 100)


def measure(svc: Services, opts: Options) -> list[Section]:
    """Run the same batch through rcbatch and both peers."""
    n, cap = sizes(opts)
    knobs = knobs_for(cap, opts)
    sim = {"duration": [1.0, 3.0], "seed": opts.seed, "concurrency": cap}
    specs = t2i_specs(n, prefix="p")
    with RcbatchCluster(svc, knobs, "peers") as cluster:
        ours = cluster.run(specs, cap=cap, timeout=600, sim=sim, name="peers")
    svc.sim.reset(**sim)
    naive = naive_celery.run_peer(svc, specs, cap=cap, workers=knobs.workers,
                                  concurrency=knobs.concurrency, timeout=1800)
    svc.sim.reset(**sim)
    poller = asyncio_poller.run_peer(svc, specs, cap=cap, max_in_flight=knobs.max_in_flight,
                                     timeout=600)
    setup = (f"N = {n} text-to-image jobs (the same seed: the same durations, uniform 1-3 s), "
             f"API cap C = {cap}; rcbatch and the naive Celery poller on {knobs.workers} "
             f"worker processes x {knobs.concurrency} slots; the asyncio poller in one process "
             f"with {knobs.max_in_flight} jobs in flight (rcbatch's max_in_flight), polling "
             f"every {asyncio_poller.INTERVAL:g} s; the naive poller sleeps "
             f"{naive_celery.POLL_SECONDS:g} s between polls.")
    part = Section("2. Peers: same jobs, same worker slots", setup)
    speed = ratio(_rate(ours), _rate(naive))
    part.add(at_least("rcbatch speed / naive Celery poller", speed, SPEEDUP, "x"),
             info("rcbatch speed / asyncio poller", ratio(_rate(ours), _rate(poller)), "x"))
    for name, out in (("rcbatch", ours), ("naive Celery", naive), ("asyncio poller", poller)):
        part.add(*_figures(name, out))
        save(out, opts, "peers-" + name.split()[0].lower())
    return [part]


def _rate(out: Outcome) -> float | None:
    return len(out.jobs) / out.makespan if out.makespan > 0 else None


def _figures(name: str, out: Outcome) -> list[Figure]:
    latencies = [j.latency for j in out.jobs]
    return [info(f"{name}: jobs/s", _rate(out), "jobs/s", 1),
            info(f"{name}: makespan ({len(out.jobs)} stored)", out.makespan, "s", 1),
            info(f"{name}: polls per job", out.polls_per_job),
            info(f"{name}: detection latency p95", quantile(latencies, 0.95), "s"),
            info(f"{name}: CPU per job", out.worker_cpu / max(1, len(out.jobs)) * 1000, "ms",
                 1)]


main = entry("peers", "measurement 2: rcbatch vs a naive Celery poller and an asyncio poller",
             measure)

if __name__ == "__main__":
    raise SystemExit(main())
