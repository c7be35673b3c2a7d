"""Polls planned for later wait in one Redis sorted set and run in rounds: one Celery message
per round of polls instead of one per poll.

A message costs a worker more than the poll it carries: publishing it, the main process holding
it until due, handing it to a pool child, acknowledging it (measured in `bench overhead`, see
bench/RESULTS.md). So a poll planned for time t joins `rcb:polls` (member "{seq} {bid}/{iid}",
score t) and arms t's tick (ticks of `TICK` seconds): the first poll of a tick sends one
`rcbatch.poll_round` message due at the tick's end, the others of that tick send nothing. A
round (`run_round`) takes up to `ROUND_LIMIT` polls due by then and runs them one after
another (more, while they find jobs done), then the fetches of the jobs it found finished;
when it took that many polls it first sends another round, so a backlog spreads over every
free pool slot. A poll runs late by at most one tick plus the polls ahead of it in its round.

Why nothing is lost or run twice:
- An entry carries its step sequence, so one made stale by a re-drive runs as a stale poll
  and exits at `begin_step`'s guard, like a duplicated message.
- Taking is atomic (a Lua script) and leases the entries taken: they stay in the set, planned
  for the end of the lease (the task's hard time limit, which no round outlives), and are
  removed once their polls ran. So two rounds never take the same entry, and the polls of a
  round whose worker was killed are taken again when its message comes back (after the
  visibility timeout, later than the lease), each start counted by `begin_step`, as the
  poll messages were.
- A round clears its tick's arm before it takes, so a poll added to a tick whose round
  already ran arms it again.
- A round message lost leaves its items with their `due` deadline: the reconciler re-drives
  them, as it does a lost poll message, and drops the entries they left behind
  (`drop_stale`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from rcbatch.worker import keys
from rcbatch.worker.fetching import hand_over, store_outputs
from rcbatch.worker.polling import poll
from rcbatch.worker.refs import PendingFetch, StepRef
from rcbatch.worker.runtime import Runtime
from rcbatch.worker.submission import isolated

#: width of a tick: the most a poll waits past its planned time for its round
TICK = 0.05
#: polls one round runs; a round that takes this many sends another first
ROUND_LIMIT = 4
#: a round that finds jobs done takes more due polls before its first fetch for this long
POLLS_FIRST_SECONDS = 0.5
#: after the first fetch of a round, more run in the round only while it has run this long;
#: later ones go to fetch tasks (a long download must not hold the others up)
FETCH_INLINE_SECONDS = 1.0
#: an arm outlives its tick's planned end by this much (a later duplicate round is harmless)
_ARM_SLACK_MS = 5_000

#: seconds between polls planned together (`PollTimer.add`): keeps their order in the set
_APART = 1e-6

#: a planned poll as the set holds it: (bid, iid, seq)
Due = tuple[str, str, int]

# KEYS: polls, the tick's arm. ARGV: take entries scored up to this, at most this many,
# leased until this time.
_TAKE = """
redis.call('DEL', KEYS[2])
local got = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(got) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], member) end
return got
"""


class PollTimer:
    """The shared set of planned polls, and the ticks that wake them."""

    def __init__(self, redis: Any, *, lease: float,
                 clock: Callable[[], float] = time.time) -> None:
        """`lease`: how long a taken poll stays reserved for its round (no round may run
        longer: the task's hard time limit)."""
        self.redis = redis
        self.lease = lease
        self.clock = clock
        self._take = redis.register_script(_TAKE)

    def add(self, polls: Sequence[Due], delay: float) -> tuple[int, float] | None:
        """Plan polls [(bid, iid, seq)] in `delay` seconds, in one round trip; rounds take
        them in the order given (each is planned a microsecond after the one before). When
        this armed the tick of the last one, returns (tick, seconds to the tick's end): the
        caller sends that tick's round."""
        if not polls:
            return None
        now = self.clock()
        planned = {_member(*due): now + delay + n * _APART for n, due in enumerate(polls)}
        tick = math.ceil((now + delay + (len(polls) - 1) * _APART) / TICK)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.POLLS, planned)
            pipe.set(keys.poll_round(tick), "1", nx=True, px=int(delay * 1000) + _ARM_SLACK_MS)
            armed = pipe.execute()[1]
        return (tick, max(0.0, tick * TICK - now)) if armed else None

    def take(self, tick: int, limit: int = ROUND_LIMIT) -> list[Due]:
        """Lease and return up to `limit` polls due by the end of `tick` (or by now, if
        later): [(bid, iid, seq)], earliest first. `done` removes them once run."""
        now = self.clock()
        taken = self._take(keys=[keys.POLLS, keys.poll_round(tick)],
                           args=[repr(max(tick * TICK, now)), limit, repr(now + self.lease)])
        return [_parse(raw) for raw in taken]

    def done(self, polls: list[Due]) -> None:
        """Remove polls that ran (their next ones, if any, are entries of their own)."""
        if polls:
            self.redis.zrem(keys.POLLS, *(_member(*due) for due in polls))

    def drop_stale(self, before: float) -> int:
        """Forget entries planned before `before` (their items were re-driven); how many."""
        return int(self.redis.zremrangebyscore(keys.POLLS, "-inf", repr(before)))


def run_round(rt: Runtime, timer: PollTimer, tick: int, again: Callable[[], None]) -> int:
    """Run the polls due by `tick` (calling `again` first when there may be more), then the
    fetches of the jobs found finished; returns how many polls were run.

    While it finds jobs done and more polls are due (a wave that ended together), the round
    goes on taking polls for up to POLLS_FIRST_SECONDS before its first fetch: each job seen
    done refills its slot, so the slots of a wave are refilled before its downloads."""
    due = timer.take(tick)
    if len(due) >= ROUND_LIMIT:
        again()
    started = rt.clock()
    fetches = _run_polls(rt, timer, due)
    ran = len(due)
    while len(due) >= ROUND_LIMIT and fetches and rt.clock() - started < POLLS_FIRST_SECONDS:
        due = timer.take(tick)
        fetches += _run_polls(rt, timer, due)
        ran += len(due)
    for n, fetch in enumerate(fetches):
        inline = n == 0 or rt.clock() - started < FETCH_INLINE_SECONDS
        isolated(rt, fetch.ref, "round_fetch_failed",
                 functools.partial(store_outputs if inline else hand_over, rt, fetch))
    return ran


def _run_polls(rt: Runtime, timer: PollTimer, due: list[Due]) -> list[PendingFetch]:
    """Run taken polls; the fetches of the jobs they found done, left for the caller."""
    rt.fetch_later = []
    try:
        ran = [planned for planned in due if _poll(rt, StepRef.at_seq(*planned))]
        fetches = rt.fetch_later
    finally:
        rt.fetch_later = None
    timer.done(ran)  # one that failed stays leased: taken again once the lease ends
    return fetches


def _poll(rt: Runtime, ref: StepRef) -> bool:
    return isolated(rt, ref, "round_poll_failed", functools.partial(poll, rt, ref))


def _member(bid: str, iid: str, seq: int) -> str:
    return f"{seq} {keys.member(bid, iid)}"


def _parse(raw: bytes | str) -> Due:
    text = raw.decode() if isinstance(raw, bytes) else raw
    seq, _, member = text.partition(" ")
    bid, iid = keys.split_member(member)
    return bid, iid, int(seq)
