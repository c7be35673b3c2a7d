"""Seeded draws: job durations and every injected fault.

Each draw comes from its own `random.Random` seeded by (seed, stream, index), never from one
shared generator: how often a client polls must not shift the durations or faults of later
submits. So with the same seed, the n-th accepted submit always gets the same duration, failure
and output faults, the n-th submit request the same request faults, and so on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rcbatch.runcomfy.simulator.config import SimulatorConfig
from rcbatch.runcomfy.simulator.outputs import GoneMode, OutputFile

RequestKind = Literal["submit", "status", "result", "cancel"]


@dataclass(frozen=True)
class RequestFaults:
    """What goes wrong with one API request (decided on arrival)."""

    fail_5xx: bool = False
    fail_429: bool = False
    drop: bool = False
    slow: bool = False
    lost_submit: bool = False
    reset: bool = False


@dataclass(frozen=True)
class JobDraw:
    """The fate of one accepted job: how long it runs and whether it fails."""

    duration: float
    will_fail: bool


class FaultPlan:
    """Draws request faults, job durations and output faults from one seed."""

    def __init__(self, config: SimulatorConfig, seed: int,
                 requests: Mapping[str, int] | None = None) -> None:
        self._config = config
        self.seed = seed
        #: requests seen per kind (a restarted simulator continues the sequences)
        self._requests: dict[str, int] = dict(requests or {})

    def request_counts(self) -> dict[str, int]:
        """How many requests of each kind have drawn their faults."""
        return dict(self._requests)

    def _rng(self, *parts: object) -> random.Random:
        # A string seed is hashed with SHA-512: stable across runs and Python versions.
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def for_request(self, kind: RequestKind) -> RequestFaults:
        """The faults of the next request of this kind (every kind has its own sequence)."""
        index = self._requests.get(kind, 0)
        self._requests[kind] = index + 1
        rng, c = self._rng("request", kind, index), self._config
        # A new kind of fault takes the next draw, so the earlier ones keep their values.
        draws = [rng.random() for _ in range(6)]
        return RequestFaults(
            fail_5xx=draws[0] < c.fail_5xx,
            fail_429=draws[1] < c.fail_429,
            drop=draws[2] < c.drop,
            slow=draws[3] < c.slow,
            lost_submit=kind == "submit" and draws[4] < c.lost_submit,
            reset=draws[5] < c.reset,
        )

    def for_job(self, index: int, bounds: tuple[float, float],
                files: tuple[OutputFile, ...]) -> JobDraw:
        """Draw the duration and failure of the index-th accepted job; mark its lost outputs."""
        rng, c = self._rng("job", index), self._config
        duration = rng.uniform(*bounds) * c.time_scale
        will_fail = rng.random() < c.job_fail
        for output in files:
            gone, permanent = rng.random() < c.output_404, rng.random() < c.output_404_permanent
            output.gone = _gone_mode(gone, permanent)
            output.gone_fetches = 0 if output.gone == "no" else c.output_404_fetches
        return JobDraw(duration, will_fail)

    def refuses(self, body_digest: bytes) -> bool:
        """Whether the content filter refuses this body (the same body always gets the same
        verdict, however often it is sent)."""
        rng = self._rng("refuse", body_digest.hex())
        return rng.random() < self._config.refuse

    def truncates(self, job_index: int, output_n: int, fetch: int) -> bool:
        """Whether this GET of an output is cut off halfway."""
        rng = self._rng("download", job_index, output_n, fetch)
        return rng.random() < self._config.output_truncate


def _gone_mode(gone: bool, permanent: bool) -> GoneMode:
    if not gone:
        return "no"
    return "permanent" if permanent else "transient"
