"""A lease in Redis (one holder at a time), and the clock thread that runs jobs while holding it.

`Lease` is shaped after celery-redbeat's lock (STYLE.md R1, R2): taken with SET NX PX and a
random token; extended *to* a fresh expiry by a Lua script that checks the token first, so only
the owner extends it; released under the same check, so a holder whose lease already passed to
another never deletes the new holder's key. The expiry lives in Redis, so the holders' clocks
need not agree. The holder also keeps a deadline of its own: it counts itself the owner only
until `ttl` after the start of the last call Redis confirmed. Redis's expiry starts later than
that, so a holder cut off from Redis stops acting before anyone else can take over.

`LeaseClock` keeps a lease from a daemon thread, one tick every `every` seconds, and while it
holds the lease runs its jobs at their intervals. Every rcbatch worker runs one (worker/tasks.py)
for the reconciler and the schedules: when the holder dies, its lease expires and another
worker's next tick takes it, so a cluster needs no separate beat process.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

_log = structlog.get_logger("rcbatch.clock")
#: held while the clock's thread writes a log line. The worker's main process forks pool
#: children at any time; a child forked in the middle of that line would inherit structlog's
#: output lock taken and hang at its first log line. A fork waits for the line instead.
_LOGGING = threading.Lock()
os.register_at_fork(before=_LOGGING.acquire, after_in_parent=_LOGGING.release,
                    after_in_child=_LOGGING.release)


def log(level: str, event: str, **values: Any) -> None:
    """Log one line of the clock's (with no fork in the middle of it)."""
    with _LOGGING:
        getattr(_log, level)(event, **values)


# KEYS: the lease. ARGV: the token, the new time to live (ms). Extends *to*, not *by* (R1).
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: the lease. ARGV: the token.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[1])
"""


def new_token() -> str:
    """A lease token that also says who holds it (host and pid, for people and tests)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


class Lease:
    """One Redis key held by at most one token at a time, for `ttl` seconds per renewal."""

    def __init__(self, client: Any, key: str, ttl: float, *,
                 clock: Callable[[], float] = time.monotonic, token: str | None = None) -> None:
        """`client`: a redis-py client; `clock`: a monotonic clock for the local deadline."""
        self.redis = client
        self.key = key
        self.ttl = ttl
        self.clock = clock
        self.token = token or new_token()
        self._until = 0.0  # the local deadline; 0: not held
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, token={self.token!r}, owned={self.owned()})"

    def owned(self) -> bool:
        """Whether this holder may act: it holds the lease and its local deadline is ahead."""
        return self.clock() < self._until

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (SET NX PX); True when taken."""
        started = self.clock()
        if self.redis.set(self.key, self.token, nx=True, px=self._ttl_ms()):
            self._until = started + self.ttl
            return True
        return False

    def extend(self) -> bool:
        """Renew the lease to a full `ttl`, only if this token still holds it."""
        started = self.clock()
        if self._extend(keys=[self.key], args=[self.token, self._ttl_ms()]):
            self._until = started + self.ttl
            return True
        self._until = 0.0
        return False

    def release(self) -> bool:
        """Give the lease up, only if this token still holds it (never another's)."""
        self._until = 0.0
        return bool(self._release(keys=[self.key], args=[self.token]))

    def keep(self) -> bool:
        """One tick: extend the lease if held, else try to take it; returns `owned()`.

        A Redis error leaves the local deadline as it was: the holder goes on until it passes.
        """
        try:
            if not (self.owned() and self.extend()):
                self.acquire()
        except redis.RedisError as exc:
            log("warning", "lease_unreachable", key=self.key, error=type(exc).__name__)
        return self.owned()

    def holder(self) -> str | None:
        """The token that holds the lease now, if any."""
        value = self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))


@dataclass
class Job:
    """Something the clock runs every `every` seconds while it holds its lease."""

    name: str
    every: float
    action: Callable[[], None]
    next_at: float = 0.0


class LeaseClock:
    """A daemon thread: keeps `lease` every `every` seconds and runs the due jobs while held."""

    def __init__(self, lease: Lease, jobs: list[Job], every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`every`: seconds between ticks, a fraction of the lease's ttl (R2: ttl = 3-5 ticks)."""
        if every >= lease.ttl:
            raise ValueError("the tick must be shorter than the lease")
        self.lease = lease
        self.jobs = jobs
        self.every = every
        self.clock = clock
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LeaseClock:
        """Start ticking in a daemon thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="rcbatch-clock", daemon=True)
            self._thread.start()
        return self

    def stop(self, wait: float = 0.0) -> None:
        """Ask the thread to end (it releases the lease); wait up to `wait` s for it."""
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def run(self) -> None:
        """Tick until stopped, then give the lease up so another worker takes it at once."""
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception as exc:  # the clock must outlive any one bad tick
                    log("warning", "clock_tick_failed", error=type(exc).__name__)
                self._stop.wait(self.every)
        finally:
            self._give_up()

    def tick(self) -> bool:
        """Keep the lease and run the jobs that are due; returns whether it is held."""
        held = self.lease.keep()
        if held != self._held:
            log("info", "clock_taken" if held else "clock_lost", token=self.lease.token)
            for job in self.jobs:
                job.next_at = 0.0  # a new holder runs every job at once
        self._held = held
        if held:
            self._run_due()
        return held

    def _run_due(self) -> None:
        now = self.clock()
        for job in self.jobs:
            if now < job.next_at:
                continue
            job.next_at = now + job.every
            try:
                job.action()
            except Exception as exc:  # a failed send is retried at the job's next turn
                log("warning", "clock_job_failed", job=job.name, error=type(exc).__name__)

    def _give_up(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self.lease.release()
            log("info", "clock_released", token=self.lease.token)
        except redis.RedisError as exc:  # it expires by itself
            log("warning", "clock_release_failed", error=type(exc).__name__)
