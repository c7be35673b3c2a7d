"""When to look at a remote job again, and how long to back off after a failure.

Image jobs take seconds, video jobs minutes: a fixed interval either wastes polls on long jobs
or adds latency to short ones. The pacer learns each model's durations as the batch runs
(durations recorded in Redis by every worker) and plans each poll so that the job is seen done
soon after it ends, relative to its duration (see `Pacer`).

Every countdown is capped well below the broker's visibility timeout (see
worker/celery_app.py): with Redis, a countdown longer than it is delivered twice. A longer
planned delay is slept in several hops (worker/polling.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: the longest single countdown (see worker/celery_app.py); a longer planned delay is
#: slept in hops of at most this, without asking the API in between (worker/polling.py)
MAX_POLL_DELAY = 30.0
#: the longest delay the pacer plans between two polls of one job
MAX_PLANNED_DELAY = 900.0
MIN_POLL_DELAY = 0.2
#: what the pacing aims at: a job is seen done within this share of its time + this floor
#: (the benchmark's bar is 10 % + 0.5 s at p95; the margin covers task hand-off and fetch)
LATENCY_SHARE = 0.08
LATENCY_FLOOR = 0.35
#: durations of a model needed before its history is trusted
MIN_HISTORY = 1
#: polls per interval that may ask the API about a model not timed yet (the scouts): more
#: find the first finished job sooner (fewer late detections in the first wave) but cost
#: more polls (a simulation of a 20-job first wave put the balance near 4)
SCOUTS = 4
#: the history's quantile taken as "the earliest a job of this model is likely done"
EARLY_QUANTILE = 0.05


@dataclass
class Pacer:
    """Chooses poll delays from the recent durations of each model.

    A duration is the time from submission to the job's end (as the API's own timestamps
    tell it, queue time included). The first poll goes out when the earliest jobs of the
    model are usually done; after that each poll follows the last after a share of the time
    elapsed so far (plus a floor), so whenever the job ends it is seen done within about
    `LATENCY_SHARE` of its time + `LATENCY_FLOOR`, with as few polls as that allows (about
    log(slowest/earliest) / log(1 + LATENCY_SHARE) at most).

    Before any job of a model has been timed, its jobs wake up on that same tight schedule
    from the start, but only `SCOUTS` wake-ups per interval (the scouts, worker/polling.py)
    ask the API; the first job seen done times the model for all of them.
    """

    durations: Callable[[str], Sequence[float]]
    rng: random.Random = field(default_factory=random.Random)
    cache_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, list[float]]] = field(default_factory=dict)

    def first_delay(self, model: str) -> float:
        """Delay from submission to the first poll (or wake-up)."""
        return self.next_delay(model, 0.0, 0)

    def next_delay(self, model: str, elapsed: float, polls: int) -> float:
        """Delay to the next poll of a job that is not done yet.

        `elapsed`: seconds since the job was submitted; `polls`: how many polls it has had
        (not needed by this policy, which depends on the time elapsed only).
        """
        history = self._history(model)
        if len(history) < MIN_HISTORY:
            return self._jitter(_tight(elapsed))
        early = _quantile(history, EARLY_QUANTILE)
        due = (1 + LATENCY_SHARE) * max(elapsed, early) + LATENCY_FLOOR
        return self._jitter(min(MAX_PLANNED_DELAY, max(MIN_POLL_DELAY, due - elapsed)))

    def scouting(self, model: str, elapsed: float) -> float | None:
        """While `model` has no durations yet: how long one scout poll holds the API for the
        model's other jobs (seconds); None once its durations are known."""
        if len(self._history(model)) >= MIN_HISTORY:
            return None
        return _tight(elapsed)

    def _history(self, model: str) -> list[float]:
        now = self.clock()
        cached = self._cache.get(model)
        # a short history is re-read at every poll: the first durations matter most
        if cached and len(cached[1]) >= MIN_HISTORY and now - cached[0] < self.cache_seconds:
            return cached[1]
        values = sorted(self.durations(model))
        self._cache[model] = (now, values)
        return values

    def _jitter(self, delay: float) -> float:
        # only ever earlier: a later poll would add latency past the aim
        return max(MIN_POLL_DELAY, delay * self.rng.uniform(0.95, 1.0))


def backoff(attempt: int, *, base: float = 1.0, cap: float = MAX_POLL_DELAY,
            rng: random.Random | None = None, retry_after: float | None = None) -> float:
    """Capped exponential backoff with full jitter; a server's Retry-After wins when longer."""
    rng = rng or random.Random()
    delay = rng.uniform(base / 2, min(cap, base * 2 ** max(0, attempt)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def _tight(elapsed: float) -> float:
    """The delay that keeps detection within the aim whenever the job ends."""
    return max(MIN_POLL_DELAY, LATENCY_SHARE * elapsed + LATENCY_FLOOR)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]
