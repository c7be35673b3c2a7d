"""When to look at a remote job again, and how long to back off after a failure.

Image jobs take seconds, video jobs minutes: a fixed interval either wastes polls on long jobs
or adds latency to short ones. The pacer learns each model's durations as the batch runs
(durations recorded in Redis by every worker) and plans each poll so that the job is seen done
soon after it ends, relative to its duration (see `Pacer`).

Before the first job of a model has ended nothing is known about its durations (the cold
start), and the model's first jobs usually start together, so the first ones to end are seen
late whatever the schedule. How the cold start is paced is described in `Pacer.cold_wake`;
bench/pacing_sim.py simulates both the cold start and the learned schedule (run it after
changing any constant below).

Every countdown is capped well below the broker's visibility timeout (see
worker/celery_app.py): with Redis, a countdown longer than it is delivered twice. A longer
planned delay is slept in several hops (worker/polling.py).
"""

from __future__ import annotations

import bisect
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: the longest single countdown (see worker/celery_app.py); a longer planned delay is
#: slept in hops of at most this, without asking the API in between (worker/polling.py)
MAX_POLL_DELAY = 30.0
#: the longest delay the pacer plans between two polls of one job
MAX_PLANNED_DELAY = 900.0
MIN_POLL_DELAY = 0.2
#: a poll woken this close to its planned time polls (countdowns are not exact)
HOP_SLACK = 0.05
#: what the pacing aims at: a job is seen done within this share of its time + this floor
#: (the benchmark's bar is 10 % + 0.5 s at p95; the margin covers task hand-off and fetch)
LATENCY_SHARE = 0.08
LATENCY_FLOOR = 0.35
#: durations of a model needed before it counts as timed (its jobs leave the cold start)
MIN_HISTORY = 1
#: a shorter history is re-read at every decision (the first durations matter most and come
#: in quickly); from this size on it is cached for `Pacer.cache_seconds`
TRUSTED_HISTORY = 10
#: the history's quantile taken as "the earliest a job of this model is likely done": a job
#: ending before it may be seen late, one ending after it costs a poll more the lower it is
#: (simulated, image-like run: 2 % costs 0.17 poll per job more than 5 % for 0.05 less p95
#: latency ratio; 3 % is between)
EARLY_QUANTILE = 0.03
#: the share of a gap between the polls of a uniform sweep's last jobs (`Pacer.next_delay`)
TAIL_SHARE = 0.5
#: refill times (a freed slot's job end -> the end of the refill that took it) of a model
#: needed before a refill's polls are aimed by them (`Pacer.refill_aim`)
REFILL_SAMPLES = 8
#: ... and they must be a wave's: this share of them within one gap of the earliest; the
#: first poll then aims at this quantile of those (a refill's end follows the end that
#: freed its slot by two job times, give or take the spread of a wave's ends, which is
#: that of the first wave's starts: aimed at the start of that spread, half of the wave
#: would be asked too early and seen a whole gap later)
REFILL_SHARE = 0.8
REFILL_QUANTILE = 0.9
#: a planned gap is shortened by up to this share at random, to spread polls out
JITTER = 0.05
#: a job's first poll aims just after a spike of the history at its earliest likely end, if
#: it has one (see `Pacer._first_aim`): at least AIM_SAMPLES ends and SPIKE_SHARE of those
#: within one gap of the earliest, all within SPIKE_WIDTH of that gap, or BIG_SPIKE ends
#: there whatever their share (late in a sweep, the jobs that waited briefly in the API's
#: queue crowd the gap after the spike; spread evenly over 1-3 s, 200 ends put 4 or 5 in a
#: spike's width) ...
AIM_SAMPLES = 8
SPIKE_SHARE = 0.5
SPIKE_WIDTH = 0.1
BIG_SPIKE = 16
#: ... plus this much: a poll landing just before the end costs a poll and a whole gap
#: (the job's clock starts when its submit was answered, after the API's own, and a round
#: runs up to a tick after its polls' planned time, so the end is rarely missed)
AIM_MARGIN = 0.02

# --- the cold start (see Pacer.cold_wake) ------------------------------------------------
#: a job of a model not timed yet wakes up (without asking the API) every this share of its
#: age + floor, to notice soon that the model got timed: the jobs that ended meanwhile are
#: then seen within their latency bar. Wake-ups cost worker time, not API requests
WAKE_SHARE = 0.02
WAKE_FLOOR = 0.35
#: each old job of a model not timed yet asks the API about itself once per this share of
#: its age + floor (its own probe), at a phase set by its request id
PROBE_SHARE = 0.3
PROBE_FLOOR = 16.0
#: ... and a model is never left longer than this (half its latency bar) without one of its
#: jobs being asked, whatever the number of jobs (the guard; one scout key per model): a
#: small batch of short jobs is then seen about as soon as with the previous rule (4 scout
#: polls per 8 % of the age), and it adds little to the own probes of a large first wave
GUARD_SHARE = 0.05
GUARD_FLOOR = 0.25
#: scout keys per model (worker/polling.py): the guard's
SCOUTS = 1
#: a job younger than this share of the model's oldest untimed job does not probe: the first
#: jobs to end are almost surely among the oldest (a refill submitted later cannot win)
YOUNG_SHARE = 0.75


@dataclass(frozen=True)
class WakePlan:
    """What a poll task of a job whose model is not timed yet does: ask the API now
    (`poll`), or wake up again after `delay` s; `probe_at` is the job's next own probe (a
    runtime clock time, to store on the item; None for a young job)."""

    poll: bool
    delay: float
    probe_at: float | None


@dataclass
class Pacer:
    """Chooses poll delays from the recent durations of each model.

    A duration is the time from submission to the job's end (as the API's own timestamps
    tell it, queue time included). Once a model is timed, a job's first poll goes out when
    the earliest jobs of the model are usually done (the history's `EARLY_QUANTILE`); after
    that each poll follows the last after a share of the time elapsed so far plus a floor.
    Whenever the job ends it is then seen done within about `LATENCY_SHARE` of its time +
    `LATENCY_FLOOR`, and this is the fewest polls that guarantee it: an end just after one
    poll must be seen by the next (about log(slowest/earliest) / log(1 + LATENCY_SHARE)
    polls at most). Only the gap beyond the earliest end is jittered: jittering the whole
    delay would pull the first poll before any job can be done. When the history has a
    spike at its earliest end (jobs that all take the same time, as in a sweep), the first
    poll aims just after the spike instead of a gap after it (`_first_aim`). A refill (a
    job submitted into the slot of one seen done) is aimed instead by the end that freed
    its slot, when the model's refill times are a wave's (`refill_aim`, worker/polling.py).

    Before a model is timed, see `cold_wake`.
    """

    durations: Callable[[str], Sequence[float]]
    rng: random.Random = field(default_factory=random.Random)
    cache_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    #: a model's recent refill times (see `refill_aim`); none known by default
    refill_times: Callable[[str], Sequence[float]] = lambda _model: ()
    _cache: dict[tuple[str, bool], tuple[float, list[float]]] = field(default_factory=dict)

    def first_delay(self, model: str) -> float:
        """Delay from submission to the first poll (or, model untimed, the first wake-up)."""
        return self.next_delay(model, 0.0, 0)

    def next_delay(self, model: str, elapsed: float, polls: int, *,
                   tail: bool = False) -> float:
        """Delay to the next poll of a job that is not done yet (model untimed: to its next
        wake-up, see `cold_wake`).

        `elapsed`: seconds since the job was submitted; `polls`: how many polls it has had
        (not needed by this policy, which depends on the time elapsed only); `tail`: the
        job's batch has nothing left to submit. Then, if many of the model's jobs take the
        same time (a spike of the history at its earliest end), the job is one of a sweep's
        last wave, whose slowest end is when the batch is done; those that were not done at
        the spike waited in the API's queue and end anywhere within a job's time after it,
        so they are asked TAIL_SHARE of a gap apart. (Not with spread-out durations: there
        the tail is a third of a video batch, and this would cost it a third of a poll per
        job.)
        """
        history = self._history(model)
        if len(history) < MIN_HISTORY:
            return self._jitter(wake_interval(elapsed))
        delay = self._planned(history, elapsed)
        early = _quantile(history, EARLY_QUANTILE)
        if tail and elapsed >= early and _spike_end(history, early,
                                                    latency_gap(early)) is not None:
            return max(MIN_POLL_DELAY, TAIL_SHARE * delay)
        return delay

    def refill_aim(self, model: str) -> float | None:
        """When a refill of `model` is asked (seconds after the end of the job whose slot it
        took), if the model's refill times (from such an end to the refill's own end) are a
        wave's (REFILL_SHARE of them within a gap of the earliest): their REFILL_QUANTILE.
        Else None: its polls are planned by durations alone.

        When the API's queue holds a whole wave of equal jobs, a refill waits there for the
        next wave and ends about two job times after the end that freed its slot, however
        late it was submitted: its duration from submission tells little (those spread over
        a job's time), the end it follows tells it to within the spread of a wave's ends.
        With spread-out durations, or when only some refills wait in the queue, the refill
        times spread too and the durations decide; so they do when they are as narrow as the
        refill times (no queue: a refill ends a job's time after its own submission, and
        its refill time adds how late its slot's end was seen).
        """
        history = self._history(model, refills=True)
        if len(history) < REFILL_SAMPLES or _width(self._history(model)) <= _width(history):
            return None
        early = _quantile(history, EARLY_QUANTILE)
        inside = history[:bisect.bisect_right(history, early + latency_gap(early))]
        if len(inside) < REFILL_SHARE * len(history):
            return None
        return _quantile(inside, REFILL_QUANTILE) + AIM_MARGIN

    def first_wake(self, model: str) -> float | None:
        """When (after submission) a job whose first poll was just planned wakes up to plan
        it again (`re_aim`), or None: it sleeps until its poll. Only while the model's
        history is too short to show a spike (`_first_aim`): its first jobs are planned on a
        gap after the earliest end, and by the time they may end the history has usually
        grown (the jobs submitted with them have ended too), so they wake at the earliest
        likely end and aim again; a wake-up asks nothing of the API."""
        history = self._history(model)
        if not MIN_HISTORY <= len(history) < AIM_SAMPLES:
            return None
        return _quantile(history, EARLY_QUANTILE)

    def re_aim(self, model: str, elapsed: float, remaining: float) -> float:
        """The rest of the wait of a job not asked yet, `elapsed` s after its submission and
        `remaining` s before its planned first poll: shortened to the first aim of the
        history as it is now when that comes sooner (0: ask now), else unchanged."""
        history = self._history(model)
        if len(history) < MIN_HISTORY:
            return remaining
        early = _quantile(history, EARLY_QUANTILE)
        spike = _spike_end(history, early, latency_gap(early))
        return remaining if spike is None else max(0.0, min(remaining, spike - elapsed))

    def timed(self, model: str) -> bool:
        """Whether enough durations of `model` are known to plan its polls."""
        return len(self._history(model)) >= MIN_HISTORY

    def resume_delay(self, model: str, elapsed: float) -> float | None:
        """A timed model's job waking up: None when it should be polled now, else how long
        to sleep first. A job that slept on the cold-start schedule, or one planned before
        the history moved, waits until its first planned poll when it is younger than the
        earliest likely end; any other may already be done (the first duration learnt is
        not the shortest when it was seen late), so it is asked at once. (A planned poll
        woken a little early, as countdowns are not exact, is not pushed back a gap.)"""
        history = self._history(model)
        early = _quantile(history, EARLY_QUANTILE) if len(history) >= MIN_HISTORY else 0.0
        if elapsed + MIN_POLL_DELAY >= early:
            return None
        return self._planned(history, elapsed)

    def cold_wake(self, elapsed: float, now: float, *, young: bool, probe_at: float | None,
                  key: str, take_guard: Callable[[float, bool], bool]) -> WakePlan:
        """A wake-up of a job whose model is not timed yet: ask the API or sleep again.

        A poll before the first end is wasted, and once the first end is seen every job of
        the model is timed at once; the jobs that ended before that are the ones seen late,
        so what matters is how soon the API is asked about *some* job that ended. The job
        not asked for the longest is the likeliest to have ended, so each old job probes
        itself once per `probe_interval(age)`, at a phase set by `key` (its request id): a
        model with n jobs waiting gets n probes per interval, in rotation, and a large
        first wave (whose late detection would make more jobs late) is looked at more
        often. The interval grows with the age (the probes cost about the same per
        doubling of the wait: a few per job on a first wave of minute-long jobs) but from a
        floor of seconds, as polls in the first seconds only pay off for jobs of seconds,
        whose floor-dominated latency bar is loose. Simulated on the benchmark's video-like
        run (bench/pacing_sim.py), this asks the API about 290 times before the models are
        timed against about 460 for the previous rule (4 scouts per 8 % of the age), and
        fewer jobs are seen late (9 against 15 of 240). A model with few jobs is still
        asked twice per latency bar: `take_guard(window, own)` takes the model's guard for
        `window` s when it is free, or in any case for an own probe (True when taken).

        Young jobs (`young`, see `young`) do not probe; they wake on the cadence of a job
        1/`YOUNG_SHARE` older. Wake-ups are frequent (`wake_interval`) so that once some
        job is seen done the others that ended meanwhile are asked within their own bar.
        """
        if young:
            return WakePlan(False, self._jitter(wake_interval(elapsed / YOUNG_SHARE)), None)
        if probe_at is None:
            probe_at = now + probe_phase(key) * probe_interval(elapsed)
        if take_guard(guard_interval(elapsed), now >= probe_at):
            return WakePlan(True, 0.0, probe_at)
        return WakePlan(False, min(self._jitter(wake_interval(elapsed)), probe_at - now),
                        probe_at)

    @staticmethod
    def young(age: float, oldest_age: float) -> bool:
        """Whether a job is much younger than its model's oldest job not timed yet."""
        return age < YOUNG_SHARE * oldest_age

    @staticmethod
    def next_probe(now: float, elapsed: float) -> float:
        """When a job whose probe saw nothing next asks again (see `cold_wake`)."""
        return now + probe_interval(elapsed)

    def _planned(self, history: Sequence[float], elapsed: float) -> float:
        early = _quantile(history, EARLY_QUANTILE)
        if elapsed < early:
            return _clamp(self._first_aim(history, early) - elapsed)
        return _clamp(self._jitter(latency_gap(elapsed)))

    def _first_aim(self, history: Sequence[float], early: float) -> float:
        """When (after submission) a job is first asked: one gap after the earliest likely
        end, or just after the ends of the history's spike at its start, if it has one.

        Any aim within [early, early + gap] sees the jobs that end in between within their
        bar. When most of the ends the history shows there (SPIKE_SHARE of them), or many
        (BIG_SPIKE), come within SPIKE_WIDTH of the gap after the earliest (jobs that all take
        the same time, as in a sweep; the others waited in the API's queue), aiming just
        after that spike sees those jobs a gap sooner, which is what a wave of equal jobs
        waits for before its slots are refilled; the later ones in the gap cost a poll more.
        With spread-out durations there is no spike and the aim stays a gap after the
        earliest end: moving a job's polls earlier by x costs about x / gap polls more per
        job."""
        gap = self._jitter(latency_gap(early))
        spike = _spike_end(history, early, gap)
        return early + gap if spike is None else spike

    def _history(self, model: str, refills: bool = False) -> list[float]:
        """A model's recent durations (or refill times), sorted; cached once trusted."""
        read = self.refill_times if refills else self.durations
        now, key = self.clock(), (model, refills)
        cached = self._cache.get(key)
        if cached and len(cached[1]) >= TRUSTED_HISTORY and now - cached[0] < self.cache_seconds:
            return cached[1]
        values = sorted(read(model))
        self._cache[key] = (now, values)
        return values

    def _jitter(self, delay: float) -> float:
        # only ever earlier: a later poll would add latency past the aim
        return max(MIN_POLL_DELAY, delay * self.rng.uniform(1.0 - JITTER, 1.0))


def latency_gap(elapsed: float) -> float:
    """The longest a job that is `elapsed` s old may stay unseen after it ends (the pacing's
    aim: LATENCY_SHARE of its time + LATENCY_FLOOR)."""
    return LATENCY_SHARE * elapsed + LATENCY_FLOOR


def _spike_end(history: Sequence[float], early: float, gap: float) -> float | None:
    """Just after the spike of the (sorted) history at `early`, if it has one: at least
    AIM_SAMPLES ends within SPIKE_WIDTH of `gap` after it that are SPIKE_SHARE of the ends
    within the gap, or BIG_SPIKE ends there (see `Pacer._first_aim`); None when it has none,
    or too few ends to tell."""
    inside = history[bisect.bisect_left(history, early):bisect.bisect_right(history, early + gap)]
    spike = inside[:bisect.bisect_right(inside, early + SPIKE_WIDTH * gap)]
    if len(spike) < BIG_SPIKE and (len(spike) < AIM_SAMPLES
                                   or len(spike) < SPIKE_SHARE * len(inside)):
        return None
    return spike[-1] + AIM_MARGIN


def _width(sorted_values: Sequence[float]) -> float:
    """How far apart the middle 80 % of (sorted) values lie."""
    return _quantile(sorted_values, 0.9) - _quantile(sorted_values, 0.1)


def _clamp(delay: float) -> float:
    return min(MAX_PLANNED_DELAY, max(MIN_POLL_DELAY, delay))


def wake_interval(age: float) -> float:
    """How often a job of a model not timed yet wakes up to see whether it got timed."""
    return max(MIN_POLL_DELAY, WAKE_SHARE * age + WAKE_FLOOR)


def probe_interval(age: float) -> float:
    """How often an old job of a model not timed yet asks the API about itself."""
    return PROBE_SHARE * age + PROBE_FLOOR


def guard_interval(age: float) -> float:
    """The longest a model not timed yet goes without any of its jobs asked (its bar)."""
    return GUARD_SHARE * age + GUARD_FLOOR


def probe_phase(key: str) -> float:
    """A job's probe phase in [0, 1): stable for the job, spread over jobs."""
    return zlib.crc32(key.encode()) / 2**32


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
