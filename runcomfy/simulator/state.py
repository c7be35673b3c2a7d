"""The simulator's whole state: options, jobs, draws, counters and the image cache."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from rcbatch.runcomfy.simulator.config import SimulatorConfig
from rcbatch.runcomfy.simulator.engine import Engine, Job
from rcbatch.runcomfy.simulator.faults import FaultPlan
from rcbatch.runcomfy.simulator.inputs import FetchedInputs
from rcbatch.runcomfy.simulator.media import ImageCache
from rcbatch.runcomfy.simulator.outputs import SimModel
from rcbatch.runcomfy.simulator.persistence import JobStore, Saved, replay
from rcbatch.runcomfy.simulator.stats import Stats, canonical_digest


class SimState:
    """Everything a request handler needs; `reset` starts over with (possibly) new options."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._clock, self._wall_clock = clock, wall_clock
        self.images = ImageCache()
        self.startup_config = config
        #: the jobs' database when `config.state_path` is set (see `persistence`)
        self.store = JobStore(config.state_path) if config.state_path is not None else None
        saved = self._load()
        if saved is None:
            self.reset(config)
        else:
            self._restore(config, saved)

    def _load(self) -> Saved | None:
        if self.store is None:
            return None
        try:
            return self.store.load()
        except BaseException:
            self.store.close()  # release the state's lock: this simulator will not start
            raise

    def reset(self, config: SimulatorConfig) -> None:
        """Forget every job and counter (also in the state); the seed (given or picked now)
        restarts its draws."""
        seed = config.seed if config.seed is not None else random.getrandbits(48)
        wall_origin = self._wall_clock() - self._clock()
        self._begin(config, seed, Engine(config.concurrency, self._clock, wall_origin))
        if self.store is not None:
            self.store.begin(seed, self.engine.wall_origin, config.concurrency,
                             self.engine.now())

    def _begin(self, config: SimulatorConfig, seed: int, engine: Engine,
               requests: Mapping[str, int] | None = None) -> None:
        self.config, self.seed, self.engine = config, seed, engine
        self.plan = FaultPlan(config, seed, requests)
        self.stats = Stats()
        #: submits that reached a handler but created no job because of an injected fault
        self.without_job: list[dict[str, Any]] = []

    def _restore(self, config: SimulatorConfig, saved: Saved) -> None:
        """Continue a saved epoch: its clock, seed (unless `config` names one) and jobs."""
        assert self.store is not None
        base = self._clock
        # The engine clock goes on from the wall clock (never back before the last record).
        shift = max(self._wall_clock() - saved.wall_origin, saved.latest) - base()
        engine = Engine(saved.capacities[0][1], lambda: base() + shift, saved.wall_origin)
        seed = config.seed if config.seed is not None else saved.seed
        self._begin(config, seed, engine, saved.requests)
        replay(engine, saved)
        now = engine.advance()
        if engine.capacity != config.concurrency:
            engine.set_capacity(config.concurrency, now)
            self.store.add_capacity(now, config.concurrency)
        if seed != saved.seed:
            self.store.note_seed(seed)
        self.stats.restore(saved.jobs)

    def close(self) -> None:
        """Write what is only kept in memory so far and close the state (if any)."""
        if self.store is not None:
            self.store.save_requests(self.plan.request_counts())
            self.store.close()
            self.store = None

    def note_without_job(self, model_id: str, body: Any, reason: str, now: float) -> None:
        """Remember a submit that created no job (refused, or its connection dropped)."""
        digest = canonical_digest(model_id, body).hex() if isinstance(body, Mapping) else None
        self.without_job.append({"model": model_id, "body_sha256": digest, "reason": reason,
                                 "at": now})

    def create_job(self, owner: str, model: SimModel, body: dict[str, Any], now: float, *,
                   answer: str = "sent", client_port: int | None = None,
                   inputs: FetchedInputs | None = None) -> Job:
        """Accept a validated submit: draw its fate, queue or start it, count it, save it.

        `inputs` (fetched with `fetch_inputs` on) are kept with the job; their error fails it.
        """
        outputs = model.plan(body, self.config)
        bounds = self.config.duration_range(model.model_id, model.kind)
        draw = self.plan.for_job(len(self.engine), bounds, outputs.files)
        job = Job(
            index=len(self.engine), request_id=str(uuid.uuid4()), owner=owner,
            model_id=model.model_id, body=body, outputs=outputs, duration=draw.duration,
            will_fail=draw.will_fail or bool(inputs and inputs.error), created=now,
            answer=answer, client_port=client_port,
            inputs=inputs.records if inputs else [], input_error=inputs.error if inputs else None,
        )
        self.engine.add(job)
        self.stats.note_accepted(model.model_id, body)
        if self.store is not None:
            self.store.add_job(job)
        for output in outputs.files:
            if output.kind == "image":
                self.images.warm(output.width, output.height, self.config.image_format)
        return job

    def cancel(self, job: Job, now: float) -> bool:
        """Cancel a queued job (and save that); False for a job in any other state."""
        done = self.engine.cancel(job, now)
        if done and self.store is not None:
            self.store.cancel(job)
        return done

    def fetched(self, job: Job) -> None:
        """Save the fetch counts of a job's outputs after one of them was fetched."""
        if self.store is not None:
            self.store.fetched(job)

    def job_listing(self, job: Job) -> Mapping[str, Any]:
        """One job as `GET /_sim/jobs` shows it (for tests and debugging)."""
        return {
            "index": job.index, "request_id": job.request_id, "model": job.model_id,
            "body_sha256": canonical_digest(job.model_id, job.body).hex(),
            "answer": job.answer, "client_port": job.client_port, "state": job.state,
            "duration": job.duration, "will_fail": job.will_fail,
            "created": job.created, "started": job.started, "finished": job.finished,
            "outputs": [{"n": f.n, "kind": f.kind, "gone": f.gone, "gets": f.gets}
                        for f in job.outputs.files],
            "inputs": job.inputs, "input_error": job.input_error,
        }
