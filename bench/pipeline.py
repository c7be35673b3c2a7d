"""Running one batch through rcbatch itself: real `rcbatch worker` processes on the bench Redis.

`RcbatchCluster` starts the workers (tests/cluster.py, the same command users run), waits until
they answer a ping, registers a batch the way `rcbatch submit` does (register, then one
dispatch nudge) and waits until every item is terminal. `Outcome` joins each item's record in
Redis with the simulator's own record of its job, so latencies are measured from the moment the
job finished at the simulator to the moment its output was stored.
"""

from __future__ import annotations

import csv
import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.harness import (
    EDIT,
    I2V,
    MONO_TO_WALL,
    SEQ,
    T2I,
    TOKEN,
    Services,
    forget_broker,
    group_cpu,
)
from bench.profiling import Spies
from rcbatch.config import Settings
from rcbatch.producer.batch import register_batch
from rcbatch.producer.spec import ItemSpec
from rcbatch.worker.state import Store
from rcbatch.worker.wiring import redis_client
from tests.cluster import Workers


@dataclass(frozen=True)
class Knobs:
    """How rcbatch is run: worker processes, slots, and the settings that matter here."""

    workers: int = 2
    concurrency: int = 2
    max_in_flight: int = 32
    #: submissions per second across workers; raised from the default 20 for benchmarks
    submit_rate: float = 500.0
    bucket_url: str = ""
    log_level: str = "INFO"
    extra_env: tuple[tuple[str, str], ...] = ()
    #: when set, every worker process is sampled with py-spy into a folder of this one
    #: named after the cluster (bench/profiling.py)
    profile_dir: str = ""


@dataclass(frozen=True)
class Job:
    """One item as the simulator and rcbatch saw it (wall-clock seconds)."""

    model: str
    duration: float
    sim_created: float
    sim_started: float
    sim_finished: float
    stored: float
    polls: int

    @property
    def latency(self) -> float:
        """Job finished at the simulator -> its output stored."""
        return self.stored - self.sim_finished


@dataclass
class Outcome:
    """A finished batch: its jobs, counters and costs."""

    started: float
    jobs: list[Job]
    counts: dict[str, int]
    stats: dict[str, Any]
    cap: int
    worker_cpu: float
    samples: list[Any] = field(default_factory=list)

    @property
    def finished(self) -> float:
        """When the last output was stored."""
        return max((j.stored for j in self.jobs), default=self.started)

    @property
    def makespan(self) -> float:
        """Batch handed over -> last output stored."""
        return self.finished - self.started

    @property
    def ideal(self) -> float:
        """The simulator's best schedule of these very jobs at its cap: every job queued at
        time 0 in submit order, each slot taking the next job the moment it frees."""
        return ideal_makespan([j.duration for j in sorted(self.jobs, key=lambda j: j.sim_created)],
                              self.cap)

    @property
    def polls_per_job(self) -> float:
        """Status and result requests at the simulator per completed job."""
        polls = self.stats["status_polls"] + self.stats["result_polls"]
        return polls / max(1, self.stats["completed"])

    def save(self, path: Path) -> None:
        """Every job as a CSV row (seconds from hand-over), for a closer look."""
        with path.open("w", newline="") as out:
            rows = csv.writer(out)
            rows.writerow(["model", "duration", "created", "started", "finished", "stored",
                           "latency", "polls"])
            for j in sorted(self.jobs, key=lambda j: j.sim_created):
                rows.writerow([j.model, f"{j.duration:.3f}"] + [
                    f"{t - self.started:.3f}" for t in (j.sim_created, j.sim_started,
                                                         j.sim_finished, j.stored)]
                              + [f"{j.latency:.3f}", j.polls])


def ideal_makespan(durations: Sequence[float], cap: int) -> float:
    """List scheduling of `durations` in order on `cap` slots, all available at time 0."""
    slots = [0.0] * min(cap, max(1, len(durations)))
    for duration in durations:
        heapq.heapreplace(slots, slots[0] + duration)
    return max(slots, default=0.0)


def t2i_specs(n: int, *, prefix: str = "j", model: str = "") -> list[ItemSpec]:
    """`n` single-image text-to-image items (tiny outputs with the bench's image scale)."""
    return [ItemSpec(f"{prefix}{k:06d}", "bench.jsonl", k + 1, model or T2I,
                     {"prompt": f"bench {prefix} {k}", "width×height": "1024x1024(1:1)",
                      "force_single": True}) for k in range(n)]


def body_for(model: str, k: int, sim_url: str) -> dict[str, Any]:
    """A valid input of `model` (one output each; inputs are the simulator's sample images)."""
    image = f"{sim_url}/_sim/inputs/1024x768.jpg"
    bodies: dict[str, dict[str, Any]] = {
        T2I: {"prompt": f"bench {k}", "width×height": "1024x1024(1:1)", "force_single": True},
        EDIT: {"image_urls": [image], "prompt": f"at night {k}", "force_single": True},
        I2V: {"image_urls": [image], "prompt": f"slow pan {k}", "number_of_frames": 121,
              "seed": k},
        SEQ: {"images": [image], "prompt": f"Generate 1 image of the harbour {k}",
              "sequential_image_generation_options": 1, "seed": k},
    }
    return bodies[model]


def mixed_specs(n: int, models: Sequence[str], sim_url: str, *,
                prefix: str = "m") -> list[ItemSpec]:
    """`n` items cycling through `models` (interleaved, as a sweep over models would be)."""
    return [ItemSpec(f"{prefix}{k:06d}", "bench.jsonl", k + 1, models[k % len(models)],
                     body_for(models[k % len(models)], k, sim_url)) for k in range(n)]


class RcbatchCluster:
    """rcbatch workers against the bench Redis and simulator, as a context manager."""

    def __init__(self, svc: Services, knobs: Knobs, name: str) -> None:
        self.svc, self.knobs, self.name = svc, knobs, name
        bucket = knobs.bucket_url or svc.folder(f"{name}-bucket").as_uri()
        self.settings = Settings(redis_url=svc.redis_url, runcomfy_api_token=SecretStr(TOKEN),
                                 runcomfy_base_url=svc.sim.base_url, bucket_url=bucket,
                                 max_in_flight=knobs.max_in_flight,
                                 submit_rate=knobs.submit_rate)
        env = {"RCBATCH_REDIS_URL": svc.redis_url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN,
               "RCBATCH_RUNCOMFY_BASE_URL": svc.sim.base_url, "RCBATCH_BUCKET_URL": bucket,
               "RCBATCH_MAX_IN_FLIGHT": str(knobs.max_in_flight),
               "RCBATCH_SUBMIT_RATE": str(knobs.submit_rate),
               "RCBATCH_LOG_LEVEL": knobs.log_level, **dict(knobs.extra_env)}
        logs = svc.folder(f"{name}-logs")
        self.workers = Workers(env, logs, count=knobs.workers, concurrency=knobs.concurrency)
        self.spies = Spies(Path(knobs.profile_dir) / name) if knobs.profile_dir else None
        self.store = Store(redis_client(svc.redis_url))

    def __enter__(self) -> RcbatchCluster:
        from rcbatch.worker.celery_app import app, configure

        self.svc.flush()
        forget_broker(app)
        configure(self.settings)
        self.workers.__enter__()
        try:
            self._wait_ready()
        except BaseException:
            self.workers.stop()
            raise
        if self.spies is not None:
            self.spies.attach(self.pgids)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spies is not None:
            self.spies.stop()
        self.workers.stop()
        self.store.redis.close()

    @property
    def pgids(self) -> list[int]:
        """The workers' process groups (main process, pool children, beat)."""
        return [p.pid for p in self.workers.procs]

    def _wait_ready(self, timeout: float = 60.0) -> None:
        from rcbatch.worker.celery_app import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(app.control.ping(timeout=0.5) or []) >= self.knobs.workers:
                return
        raise RuntimeError(f"workers not ready after {timeout}s:\n{self.workers.logs()}")

    def submit(self, specs: Sequence[ItemSpec], name: str) -> str:
        """Register a batch and nudge a dispatch, as `rcbatch submit` does; its id."""
        from rcbatch.worker.tasks import CeleryPublisher

        reg = register_batch(self.store, specs, name=name,
                             bucket_url=self.settings.resolved_bucket_url(), sources=["bench"])
        CeleryPublisher().dispatch()
        return reg.batch_id

    def run(self, specs: Sequence[ItemSpec], *, cap: int, timeout: float,
            name: str = "bench", sim: Mapping[str, Any] | None = None) -> Outcome:
        """Run one batch to the end; with `sim`, reset the simulator to those options first
        (its cap is `cap`)."""
        if sim is not None:
            self.svc.sim.reset(**{**sim, "concurrency": cap})
        cpu0 = group_cpu(self.pgids)
        started = time.time()
        bid = self.submit(specs, name)
        self.wait(bid, timeout)
        cpu = group_cpu(self.pgids) - cpu0
        return self.outcome(bid, started, cap, cpu)

    def wait(self, bid: str, timeout: float) -> dict[str, int]:
        """Wait until every item of `bid` is terminal; the counts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.is_finished(bid):
                return self.store.counts(bid)
            time.sleep(0.05)
        raise TimeoutError(f"batch not finished after {timeout:.0f}s: "
                           f"{self.store.counts(bid)}\n{self.workers.logs()}")

    def outcome(self, bid: str, started: float, cap: int, cpu: float) -> Outcome:
        """Join the batch's items with the simulator's jobs."""
        done = [Stored(item["request_id"], item["model"], float(item["finished_at"]),
                       int(item.get("polls", 0)))
                for item in self.store.iter_items(bid)
                if item.get("state") == "completed" and item.get("request_id")]
        return outcome_of(self.svc, done, started=started, cap=cap, cpu=cpu,
                          counts=self.store.counts(bid))


@dataclass(frozen=True)
class Stored:
    """One job whose outputs a runner (rcbatch or a peer) stored: when, after how many polls."""

    request_id: str
    model: str
    stored: float
    polls: int


def outcome_of(svc: Services, done: Sequence[Stored], *, started: float, cap: int,
               cpu: float, counts: dict[str, int] | None = None) -> Outcome:
    """An `Outcome` from what a runner stored, joined with the simulator's own job records."""
    sim_jobs = {j["request_id"]: j for j in svc.sim.jobs()}
    jobs = []
    for one in done:
        job = sim_jobs.get(one.request_id)
        if job is None or job["finished"] is None:
            continue
        jobs.append(Job(model=one.model, duration=float(job["duration"]),
                        sim_created=job["created"] + MONO_TO_WALL,
                        sim_started=job["started"] + MONO_TO_WALL,
                        sim_finished=job["finished"] + MONO_TO_WALL,
                        stored=one.stored, polls=one.polls))
    return Outcome(started=started, jobs=jobs, counts=counts or {"completed": len(jobs)},
                   stats=svc.sim.stats(), cap=cap, worker_cpu=cpu)
