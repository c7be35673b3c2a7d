"""The clock lease (worker/lease.py) against a real Redis: one holder, renewed only by its
owner, lost by expiry, taken over, released only while owned; and the clock that runs jobs
only while it holds the lease."""

from __future__ import annotations

import os
import time
from typing import cast

import pytest
import redis

from rcbatch.worker.lease import Job, Lease, LeaseClock

KEY = "rcb:test-lease"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pttl(client: redis.Redis) -> int:
    """Milliseconds the lease key has left."""
    return cast(int, client.pttl(KEY))


def lease(client: redis.Redis, ttl: float = 10.0, clock: Clock | None = None) -> Lease:
    return Lease(client, KEY, ttl, clock=clock or Clock())


def test_only_one_of_two_contenders_takes_the_lease(redis_client: redis.Redis) -> None:
    a, b = lease(redis_client), lease(redis_client)
    assert a.acquire() and a.owned()
    assert not b.acquire() and not b.owned()
    assert a.holder() == a.token != b.token
    assert 9000 < pttl(redis_client) <= 10_000


def test_the_token_names_the_holding_process(redis_client: redis.Redis) -> None:
    a = lease(redis_client)
    assert a.acquire()
    assert f":{os.getpid()}:" in (a.holder() or "")


def test_only_the_owner_extends_and_it_extends_to_a_full_ttl(redis_client: redis.Redis) -> None:
    a, b = lease(redis_client), lease(redis_client)
    a.acquire()
    redis_client.pexpire(KEY, 500)
    assert not b.extend()
    assert pttl(redis_client) <= 500 and a.holder() == a.token
    assert a.extend()
    assert 9000 < pttl(redis_client) <= 10_000  # to the ttl, not by it


def test_an_unrenewed_lease_expires_and_another_takes_it_over(redis_client: redis.Redis) -> None:
    a, b = lease(redis_client, ttl=0.2), lease(redis_client, ttl=0.2)
    assert a.keep() and not b.keep()
    time.sleep(0.3)  # a misses its renewals (a SIGKILLed worker)
    assert a.holder() is None
    assert b.keep() and b.holder() == b.token
    assert not a.keep()  # the old holder finds out at its next tick and stops acting
    assert not a.extend() and b.holder() == b.token


def test_release_only_while_owned_never_deletes_the_next_holders_key(
        redis_client: redis.Redis) -> None:
    a, b = lease(redis_client, ttl=0.2), lease(redis_client)
    a.acquire()
    assert not b.release() and a.holder() == a.token
    time.sleep(0.3)
    assert b.acquire()
    assert not a.release()  # late: the lease is b's now
    assert b.holder() == b.token
    assert b.release() and b.holder() is None and not b.owned()


def test_a_holder_stops_acting_when_its_own_deadline_passes(redis_client: redis.Redis) -> None:
    """Cut off from Redis, a holder cannot renew: it must stop before the key can expire."""
    clock = Clock()
    a = lease(redis_client, ttl=6.0, clock=clock)
    assert a.keep()
    clock.now += 5.9
    assert a.owned()
    clock.now += 0.2
    assert not a.owned() and a.holder() == a.token  # Redis's expiry comes later than ours


def test_an_unreachable_redis_is_a_lost_tick_not_a_crash(redis_url: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    assert Lease(dead, KEY, 6.0).keep() is False


def test_a_missing_key_after_a_redis_restart_is_taken_again(redis_client: redis.Redis) -> None:
    a = lease(redis_client)
    assert a.keep()
    redis_client.flushall()  # a restart without persistence
    assert a.keep() and a.holder() == a.token


# --- the clock ---------------------------------------------------------------------------


def recording_clock(client: redis.Redis, clock: Clock, runs: list[str], name: str,
                    ttl: float = 6.0) -> LeaseClock:
    jobs = [Job("often", 5.0, lambda: runs.append(f"{name}:often")),
            Job("rarely", 30.0, lambda: runs.append(f"{name}:rarely"))]
    return LeaseClock(Lease(client, KEY, ttl, clock=clock), jobs, every=2.0, clock=clock)


def test_only_the_holder_runs_jobs_each_at_its_own_interval(redis_client: redis.Redis) -> None:
    clock = Clock()
    runs: list[str] = []
    a = recording_clock(redis_client, clock, runs, "a")
    b = recording_clock(redis_client, clock, runs, "b")
    assert a.tick() and not b.tick()
    assert runs == ["a:often", "a:rarely"]  # a new holder runs every job at once
    for _ in range(15):  # 30 s of ticks
        clock.now += 2.0
        a.tick()
        b.tick()
    assert runs.count("a:often") == 1 + 30 // 6 and runs.count("a:rarely") == 2
    assert not any(r.startswith("b:") for r in runs)


def test_a_stopped_clock_releases_and_the_next_one_takes_over_at_its_next_tick(
        redis_client: redis.Redis) -> None:
    clock = Clock()
    runs: list[str] = []
    a = recording_clock(redis_client, clock, runs, "a")
    b = recording_clock(redis_client, clock, runs, "b")
    a.tick()
    a.stop()
    a.run()  # stopped already: the loop ends at once and gives the lease up
    assert redis_client.get(KEY) is None
    assert b.tick() and runs[-2:] == ["b:often", "b:rarely"]


def test_a_failing_job_does_not_stop_the_others(redis_client: redis.Redis) -> None:
    clock = Clock()
    runs: list[str] = []

    def broken() -> None:
        raise ConnectionError("broker down")

    jobs = [Job("broken", 5.0, broken), Job("fine", 5.0, lambda: runs.append("fine"))]
    ticker = LeaseClock(Lease(redis_client, KEY, 6.0, clock=clock), jobs, every=2.0,
                        clock=clock)
    assert ticker.tick() and runs == ["fine"]


def test_the_tick_must_be_shorter_than_the_lease(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="shorter"):
        LeaseClock(Lease(redis_client, KEY, 2.0), [], every=2.0)


def test_a_started_clock_takes_the_lease_from_its_thread(redis_client: redis.Redis) -> None:
    runs: list[str] = []
    ticker = LeaseClock(Lease(redis_client, KEY, 3.0),
                        [Job("once", 60.0, lambda: runs.append("ran"))], every=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while not runs and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs == ["ran"] and redis_client.get(KEY) == ticker.lease.token.encode()
    finally:
        ticker.stop(wait=5)
    assert redis_client.get(KEY) is None
