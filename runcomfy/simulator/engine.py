"""Jobs, the per-token concurrency cap, the FIFO queue and the clock.

Time is modelled exactly and lazily: `advance(now)` replays every event up to `now` in order.
When a running job's duration ends, its slot goes to the next queued job at that very instant
(the job's end time), not when the next request happens to arrive, so the schedule is the
ideal one however often clients poll. Callers advance the engine on every request and a
background tick keeps it fresh between requests.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rcbatch.runcomfy.simulator.outputs import OutputPlan

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@dataclass(eq=False)
class Job:
    """One accepted request. Times are the engine's clock (monotonic seconds)."""

    index: int
    request_id: str
    owner: str
    model_id: str
    body: dict[str, Any]
    outputs: OutputPlan
    duration: float
    will_fail: bool
    created: float
    state: JobState = "queued"
    started: float | None = None
    finished: float | None = None
    qseq: int = 0
    #: what became of the submit's answer: "sent", "lost" (lost_submit) or "slow"
    answer: str = "sent"
    #: the TCP port the submit came from (tells which client process sent it)
    client_port: int | None = None
    #: the input images fetched (`fetch_inputs`): field, url, status, sha256, bytes
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: why the job fails because of its inputs (an input URL not answering with an image)
    input_error: str | None = None

    @property
    def end(self) -> float:
        """When the job finishes (only meaningful once started)."""
        return (self.started or 0.0) + self.duration


@dataclass(eq=False)
class Lane:
    """One token's jobs: at most `capacity` running, the rest queued in order.

    Queued jobs carry increasing `qseq` numbers; a cancelled job stays in the deque (skipped
    when reached) and its number goes into `cancelled`, so a queue position is a subtraction
    and a bisect instead of a scan of a possibly long queue.
    """

    running: list[Job] = field(default_factory=list)
    queue: deque[Job] = field(default_factory=deque)
    next_qseq: int = 1
    left_upto: int = 0
    cancelled: list[int] = field(default_factory=list)

    def enqueue(self, job: Job) -> None:
        """Put a job at the end of the queue."""
        job.qseq = self.next_qseq
        self.next_qseq += 1
        self.queue.append(job)

    def pop_next(self) -> Job | None:
        """The next queued job that is still waiting, or None."""
        while self.queue:
            job = self.queue.popleft()
            self.left_upto = job.qseq
            del self.cancelled[: bisect.bisect_right(self.cancelled, self.left_upto)]
            if job.state == "queued":
                return job
        return None

    def position(self, job: Job) -> int:
        """1-based place of a queued job among this token's queued jobs (1 = starts next)."""
        ahead_cancelled = bisect.bisect_left(self.cancelled, job.qseq)
        return job.qseq - self.left_upto - ahead_cancelled


class Engine:
    """All jobs of all tokens, advanced on an injected clock."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic,
                 wall_origin: float | None = None) -> None:
        self.capacity = capacity
        self._clock = clock
        #: the wall-clock time (epoch seconds) of the engine time 0
        self.wall_origin = time.time() - clock() if wall_origin is None else wall_origin
        self._lanes: dict[str, Lane] = {}
        self._jobs: dict[str, Job] = {}
        self.counts: Counter[str] = Counter()
        self.first_submit: float | None = None
        self.last_finished: float | None = None
        self.peak_in_progress = 0

    def now(self) -> float:
        """The current time on the engine's clock."""
        return self._clock()

    def wall(self, moment: float) -> datetime:
        """The UTC wall-clock time of an engine time."""
        return datetime.fromtimestamp(self.wall_origin + moment, UTC)

    def advance(self, now: float | None = None) -> float:
        """Replay every finish (and the start it frees) up to `now`; returns `now`."""
        now = self.now() if now is None else now
        for lane in self._lanes.values():
            self._advance_lane(lane, now)
        return now

    def _advance_lane(self, lane: Lane, now: float) -> None:
        while lane.running:
            job = min(lane.running, key=lambda j: j.end)
            if job.end > now:
                return
            lane.running.remove(job)
            self._finish(job)
            self._fill(lane, job.end)

    def _fill(self, lane: Lane, at: float) -> None:
        """Start queued jobs at `at` while the lane is below the cap."""
        while len(lane.running) < self.capacity:
            following = lane.pop_next()
            if following is None:
                return
            self._start(lane, following, at)

    def _start(self, lane: Lane, job: Job, at: float) -> None:
        self._move(job, "running")
        job.started = at
        lane.running.append(job)
        self.peak_in_progress = max(self.peak_in_progress, len(lane.running))

    def _finish(self, job: Job) -> None:
        self._move(job, "failed" if job.will_fail else "succeeded")
        job.finished = job.end
        self.last_finished = max(self.last_finished or job.end, job.end)

    def _move(self, job: Job, state: JobState) -> None:
        self.counts[job.state] -= 1
        self.counts[state] += 1
        job.state = state

    def add(self, job: Job) -> None:
        """Accept a job created at `job.created` (advance to that time first)."""
        self._jobs[job.request_id] = job
        self.counts[job.state] += 1
        if self.first_submit is None:
            self.first_submit = job.created
        lane = self._lanes.setdefault(job.owner, Lane())
        if len(lane.running) < self.capacity:
            self._start(lane, job, job.created)
        else:
            lane.enqueue(job)

    def set_capacity(self, capacity: int, at: float) -> None:
        """Change the per-token cap at `at`: a larger one starts queued jobs at once, a smaller
        one lets running jobs finish and starts no more until they are under it."""
        self.advance(at)
        self.capacity = capacity
        for lane in self._lanes.values():
            self._fill(lane, at)

    def get(self, request_id: str) -> Job | None:
        """The job with this id, if any."""
        return self._jobs.get(request_id)

    def cancel(self, job: Job, now: float) -> bool:
        """Cancel a queued job; False (and no change) for a job in any other state."""
        if job.state != "queued":
            return False
        self._move(job, "cancelled")
        job.finished = now
        bisect.insort(self._lanes[job.owner].cancelled, job.qseq)
        return True

    def queue_position(self, job: Job) -> int | None:
        """The 1-based queue position of a queued job, None for any other state."""
        if job.state != "queued":
            return None
        return self._lanes[job.owner].position(job)

    def next_event(self) -> float | None:
        """When the earliest running job ends, or None when nothing runs."""
        ends = [j.end for lane in self._lanes.values() for j in lane.running]
        return min(ends, default=None)

    def jobs(self) -> Iterator[Job]:
        """Every job, in submit order."""
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)
