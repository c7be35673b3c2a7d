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
from rcbatch.runcomfy.simulator.media import ImageCache
from rcbatch.runcomfy.simulator.outputs import SimModel
from rcbatch.runcomfy.simulator.stats import Stats, canonical_digest


class SimState:
    """Everything a request handler needs; `reset` starts over with (possibly) new options."""

    def __init__(self, config: SimulatorConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.images = ImageCache()
        self.startup_config = config
        self.reset(config)

    def reset(self, config: SimulatorConfig) -> None:
        """Forget every job and counter; the seed (given or picked now) restarts its draws."""
        self.config = config
        self.seed = config.seed if config.seed is not None else random.getrandbits(48)
        self.engine = Engine(config.concurrency, self._clock)
        self.plan = FaultPlan(config, self.seed)
        self.stats = Stats()
        #: submits that reached a handler but created no job because of an injected fault
        self.without_job: list[dict[str, Any]] = []

    def note_without_job(self, model_id: str, body: Any, reason: str, now: float) -> None:
        """Remember a submit that created no job (refused, or its connection dropped)."""
        digest = canonical_digest(model_id, body).hex() if isinstance(body, Mapping) else None
        self.without_job.append({"model": model_id, "body_sha256": digest, "reason": reason,
                                 "at": now})

    def create_job(self, owner: str, model: SimModel, body: dict[str, Any],
                   now: float) -> Job:
        """Accept a validated submit: draw its fate, queue or start it, count it."""
        outputs = model.plan(body, self.config)
        bounds = self.config.duration_range(model.model_id, model.kind)
        draw = self.plan.for_job(len(self.engine), bounds, outputs.files)
        job = Job(
            index=len(self.engine), request_id=str(uuid.uuid4()), owner=owner,
            model_id=model.model_id, body=body, outputs=outputs, duration=draw.duration,
            will_fail=draw.will_fail, created=now,
        )
        self.engine.add(job)
        self.stats.note_accepted(model.model_id, body)
        for output in outputs.files:
            if output.kind == "image":
                self.images.warm(output.width, output.height, self.config.image_format)
        return job

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
        }
