"""When to look at a remote job again, and how long to back off after a failure.

Image jobs take seconds, video jobs minutes: a fixed interval either wastes polls on long jobs
or adds latency to short ones. The pacer learns each model's durations as the batch runs
(durations recorded in Redis by every worker) and aims the next poll at the moment the job is
likely to be done; past that moment it polls at a short interval proportional to the model's
typical duration. With no history yet it backs off exponentially from one second.

Every delay is capped well below the broker's visibility timeout (see worker/celery_app.py):
with Redis, a countdown longer than it is delivered twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_POLL_DELAY = 30.0
MIN_POLL_DELAY = 0.2


@dataclass
class Pacer:
    """Chooses poll delays from the recent durations of each model."""

    durations: Callable[[str], Sequence[float]]
    rng: random.Random = field(default_factory=random.Random)
    cache_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, list[float]]] = field(default_factory=dict)

    def first_delay(self, model: str) -> float:
        """Delay from submission to the first poll."""
        history = self._history(model)
        if len(history) < 3:
            return self._jitter(1.0)
        return self._jitter(max(MIN_POLL_DELAY, _quantile(history, 0.25)))

    def next_delay(self, model: str, running_for: float | None, polls: int) -> float:
        """Delay to the next poll of a job that is not done yet.

        `running_for`: seconds since the job was first seen in progress (None while queued);
        `polls`: how many polls this job has had.
        """
        history = self._history(model)
        if len(history) < 3:
            return self._jitter(min(MAX_POLL_DELAY, 1.0 * 1.5 ** max(0, polls - 1)))
        typical = _quantile(history, 0.5)
        if running_for is None:
            return self._jitter(_clamp(typical * 0.5))
        remaining = _quantile(history, 0.5) - running_for
        if remaining > MIN_POLL_DELAY:
            return self._jitter(_clamp(remaining))
        return self._jitter(_clamp(0.08 * typical + 0.1))

    def _history(self, model: str) -> list[float]:
        now = self.clock()
        cached = self._cache.get(model)
        if cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        values = sorted(self.durations(model))
        self._cache[model] = (now, values)
        return values

    def _jitter(self, delay: float) -> float:
        return _clamp(delay * self.rng.uniform(0.95, 1.05))


def backoff(attempt: int, *, base: float = 1.0, cap: float = MAX_POLL_DELAY,
            rng: random.Random | None = None, retry_after: float | None = None) -> float:
    """Capped exponential backoff with full jitter; a server's Retry-After wins when longer."""
    rng = rng or random.Random()
    delay = rng.uniform(base / 2, min(cap, base * 2 ** max(0, attempt)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _clamp(delay: float) -> float:
    return min(MAX_POLL_DELAY, max(MIN_POLL_DELAY, delay))
