"""Batch and item records in Redis, the source of truth, changed only by atomic transitions.

An item's record (``rcb:item:{bid}:{iid}``) holds:

    id, file, line, model, input (JSON body sent), state (worker/keys.py), token (dispatch),
    attempt_id, attempts, request_id, seq (poll/fetch step), deliveries (starts of the current
    step), output_urls (JSON), outputs (JSON), error (JSON), submitted_at, started_at,
    finished_at, history (JSON list of earlier attempts' errors), cost

Every change goes through `Store.transition` (one Lua script, worker/scripts.py): it checks
the state the caller expects, and optionally a guard field (the dispatch token or the step
sequence), before it writes anything; a caller whose expectation no longer holds is a stale
or duplicated message and must simply stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis
import redis.sentinel

from rcbatch.worker import keys, retention, scripts
from rcbatch.worker.refs import StepRef

KEEP = ""
REMOVE = "-"
DELETE_FIELD = "\0"
_CHUNK = 1000
#: items woken per script call (`wake_polls`): Redis runs nothing else meanwhile
_WAKE_CHUNK = 500
#: seconds a finished batch's records stay (Settings.retention's default)
DEFAULT_RETENTION = 3 * 86_400.0


@dataclass(frozen=True)
class NewItem:
    """What the producer registers for one item."""

    item_id: str
    file: str
    line: int
    model: str
    input: Mapping[str, Any]
    extra: Mapping[str, str] = field(default_factory=dict)


class Step(NamedTuple):
    """What `Store.begin_step` tells a step: may it run, the item's state, how many times
    this step was started, and (when it may run) the item's record and a few fields of its
    batch's record (state, discard, bucket_url) with its count of items still to be
    submitted (pending)."""

    ok: bool
    state: str
    deliveries: int
    item: dict[str, str]
    batch: dict[str, str]


@dataclass(frozen=True)
class Registration:
    """The outcome of registering a batch: its id and how many items were new."""

    batch_id: str
    added: int
    existing: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


class Store:
    """Reads and changes batch and item records in one Redis database."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float] = time.time,
                 retention: float = DEFAULT_RETENTION, replicated: bool | None = None) -> None:
        """`replicated`: wait for a replica before writes that money depends on (default:
        when the client follows a Sentinel set, whose failover may drop unreplicated writes)."""
        # redis-py types every sync command as "Awaitable | result" (one stub for both
        # clients); Any keeps our code free of casts on each call.
        self.redis: Any = client
        self.clock = clock
        if replicated is None:
            pool = getattr(client, "connection_pool", None)
            replicated = isinstance(pool, redis.sentinel.SentinelConnectionPool)
        self.replicated = replicated
        #: seconds a finished batch's records stay in Redis (worker/retention.py)
        self.retention = retention
        self._transition = client.register_script(scripts.TRANSITION)
        self._begin = client.register_script(scripts.BEGIN_STEP)
        self._claim = client.register_script(scripts.CLAIM)
        self._rate = client.register_script(scripts.RATE_ACQUIRE)
        self._reserve = client.register_script(scripts.RESERVE)
        self._refund = client.register_script(scripts.REFUND)
        self._register = client.register_script(scripts.REGISTER)
        self._wake = client.register_script(scripts.WAKE_POLLS)

    # --- batches -------------------------------------------------------------------------

    def batch_id_for_name(self, name: str) -> str | None:
        """The id of the batch registered under `name`, if its records are still here (a
        name whose batch expired is free for a new batch)."""
        value = self.redis.hget(keys.NAMES, name)
        if value is None or not self.redis.exists(keys.batch(_text(value))):
            return None
        return _text(value)

    def register(self, bid: str, record: Mapping[str, str], items: Iterable[NewItem],
                 *, start: bool = True) -> Registration:
        """Create or extend a batch; items already known keep their state (resume)."""
        now = self.clock()
        is_new = not self.redis.exists(keys.batch(bid))
        if is_new:
            state = keys.BATCH_RUNNING if start else keys.BATCH_SCHEDULED
            self.redis.hset(keys.batch(bid), mapping={
                **record, "id": bid, "state": state, "created_at": str(now), "total": "0"})
            self.redis.zadd(keys.BATCHES, {bid: now})
            if record.get("name"):
                self.redis.hset(keys.NAMES, record["name"], bid)
        added = existing = 0
        for chunk in _chunks(items, _CHUNK):
            new = self._add_items(bid, chunk, now)
            added += new
            existing += len(chunk) - new
        if added:
            self.redis.zadd(keys.ACTIVE, {bid: now})
            self.redis.hset(keys.batch(bid), "finished_at", "")
            if not is_new:  # active again: its records must not expire under it
                retention.revive(self, bid)
        return Registration(bid, added, existing)

    def _add_items(self, bid: str, chunk: Sequence[NewItem], now: float) -> int:
        """Register the items of `chunk` not yet known, in one script call (scripts.REGISTER)."""
        extras = list(dict.fromkeys(name for spec in chunk for name in spec.extra))
        columns = ["id", "file", "line", "model", "input", *extras]
        constants = {"state": keys.PENDING, "attempts": "0", "seq": "0", "deliveries": "0",
                     "registered_at": str(now)}
        args: list[Any] = [bid, len(columns), *columns, len(constants)]
        for pair in constants.items():
            args += pair
        for spec in chunk:
            args += (spec.item_id, spec.file, str(spec.line), spec.model,
                     json.dumps(spec.input, ensure_ascii=False, separators=(",", ":")))
            args += (spec.extra.get(name, DELETE_FIELD) for name in extras)
        return int(self._register(keys=[keys.batch(bid), keys.order(bid), keys.pending(bid),
                                         keys.counts(bid)], args=args))

    def batch(self, bid: str) -> dict[str, str] | None:
        """The batch record, or None for an unknown id."""
        raw = self.redis.hgetall(keys.batch(bid))
        return _decode(raw) if raw else None

    def set_batch(self, bid: str, **values: str) -> None:
        """Set fields of a batch record."""
        self.redis.hset(keys.batch(bid), mapping=values)

    def counts(self, bid: str) -> dict[str, int]:
        """Counts of items per public state (all seven present)."""
        raw = _decode(self.redis.hgetall(keys.counts(bid)))
        return {state: int(raw.get(state, 0)) for state in keys.PUBLIC_STATES}

    def is_finished(self, bid: str) -> bool:
        """True when every item of the batch is in a terminal state."""
        return self.progress(bid)[0]

    def progress(self, bid: str) -> tuple[bool, int]:
        """(every item terminal, how many items), read in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.counts(bid))
            pipe.hget(keys.batch(bid), "total")
            raw, total = pipe.execute()
        counts = _decode(raw)
        ended = sum(int(counts.get(s, 0)) for s in keys.PUBLIC_TERMINAL)
        return ended >= int(total or 0), int(total or 0)

    def active_batches(self) -> list[str]:
        """Batches not yet finished, oldest first."""
        return [_text(b) for b in self.redis.zrange(keys.ACTIVE, 0, -1)]

    def mark_inactive(self, bid: str) -> None:
        """Take a finished batch off the active list and let its records expire `retention`
        seconds after it finished, leaving a tombstone (worker/retention.py). A batch with an
        item not terminal (retried meanwhile) is left as it is."""
        retention.seal(self, bid)

    def all_batches(self) -> list[str]:
        """Every batch id, oldest first."""
        return [_text(b) for b in self.redis.zrange(keys.BATCHES, 0, -1)]

    # --- items ---------------------------------------------------------------------------

    def item(self, bid: str, iid: str) -> dict[str, str] | None:
        """One item's record, or None."""
        raw = self.redis.hgetall(keys.item(bid, iid))
        return _decode(raw) if raw else None

    def item_ids(self, bid: str) -> list[str]:
        """A batch's item ids in input order."""
        return [_text(i) for i in self.redis.lrange(keys.order(bid), 0, -1)]

    def iter_items(self, bid: str) -> Iterator[dict[str, str]]:
        """Every item record of a batch, in input order, read in pipelined chunks."""
        ids = self.item_ids(bid)
        for start in range(0, len(ids), _CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for iid in ids[start:start + _CHUNK]:
                    pipe.hgetall(keys.item(bid, iid))
                for raw in pipe.execute():
                    if raw:
                        yield _decode(raw)

    def transition(self, who: StepRef | str, iid: str = "", *, expect: Iterable[str],
                   to: str = KEEP, guard: tuple[str, str] | None = None,
                   due: float | str | None = None, inflight: float | str | None = None,
                   values: Mapping[str, Any] | None = None) -> tuple[bool, str]:
        """Atomically move an item if it is in one of `expect` (and `guard` holds).

        The item is a step's ref (its guard comes with it), or `bid, iid` with an optional
        `guard`. `due` and `inflight` take a score, `REMOVE`, or None (leave as is). `values`
        are written to the record (a key starting with "+" is incremented, a value of
        `DELETE_FIELD` removes the field). Returns (changed, state before).
        """
        bid, iid, guard = _target(who, iid, guard)
        args: list[Any] = [
            keys.member(bid, iid), " ".join(expect), guard[0] if guard else "",
            guard[1] if guard else "", to, _score(due), _score(inflight)]
        for name, value in (values or {}).items():
            args += [name, _field_value(value)]
        ok, before = self._transition(
            keys=[keys.item(bid, iid), keys.counts(bid), keys.DUE, keys.INFLIGHT], args=args)
        return bool(ok), _text(before)

    def begin_step(self, who: StepRef | str, iid: str = "", *, expect: Iterable[str],
                   guard: tuple[str, str] | None = None) -> Step:
        """Count a task starting its step (the item named as in `transition`); when allowed,
        the item's record and its batch's state come back in the same round trip (a step
        reads them anyway)."""
        bid, iid, guard = _target(who, iid, guard)
        out = self._begin(keys=[keys.item(bid, iid), keys.batch(bid), keys.counts(bid)], args=[
            " ".join(expect), guard[0] if guard else "", guard[1] if guard else ""])
        if not out[0]:
            return Step(False, _text(out[1]), 0, {}, {})
        flat = [_text(x) for x in out[3]]
        batch = dict(zip(("state", "discard", "bucket_url", "pending"),
                         (_text(v) if v is not None else "" for v in out[4]), strict=True))
        return Step(True, _text(out[1]), int(out[2]), dict(zip(flat[0::2], flat[1::2],
                                                                strict=True)), batch)

    def claim(self, bid: str, *, cap: int, lease: float, claim_due: float,
              limit: int = 100) -> list[tuple[str, str]]:
        """Move up to `limit` pending items to claimed while slots are free: [(iid, token)]."""
        now = self.clock()
        out = self._claim(
            keys=[keys.batch(bid), keys.pending(bid), keys.INFLIGHT, keys.DUE,
                  keys.counts(bid), keys.TOKENS],
            args=[now, cap, now + lease, now + claim_due, limit, bid])
        flat = [_text(x) for x in out]
        return list(zip(flat[0::2], flat[1::2], strict=True))

    def on_a_replica(self, timeout_ms: int = 2000) -> bool:
        """Whether this connection's writes so far reached a replica (WAIT), so a failover
        cannot undo them; always True without replication. A submit is sent only after its
        `submitting` mark passed here: a mark lost in a failover would send it twice.
        A master with no replica connected (its replica just took over from it) has nothing
        to fail over to, so nothing can undo the write: True."""
        if not self.replicated:
            return True
        if not int(self.redis.info("replication").get("connected_slaves", 0)):
            return True
        return int(self.redis.wait(1, timeout_ms)) >= 1

    def requeue(self, bid: str, iid: str, *, front: bool = True) -> None:
        """Put an item back on its batch's pending list."""
        push = self.redis.lpush if front else self.redis.rpush
        push(keys.pending(bid), iid)

    def overdue(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        """Items whose next step should have happened by `now`: [(bid, iid)]."""
        members = self.redis.zrangebyscore(keys.DUE, "-inf", now, start=0, num=limit)
        return [keys.split_member(_text(m)) for m in members]

    def in_flight(self) -> int:
        """How many slots are held right now (expired leases excluded)."""
        return int(self.redis.zcount(keys.INFLIGHT, self.clock(), "+inf"))

    def reserve_cost(self, bid: str, iid: str, estimate: float) -> bool:
        """Reserve an item's estimated cost against the batch's budget (atomic, once)."""
        return bool(self._reserve(keys=[keys.batch(bid), keys.item(bid, iid)],
                                  args=[repr(float(estimate))]))

    def refund_cost(self, bid: str, iid: str, estimate: float) -> None:
        """Give back an item's reservation: its submission created no job."""
        self._refund(keys=[keys.batch(bid), keys.item(bid, iid)], args=[repr(float(estimate))])

    # --- shared limits and pacing --------------------------------------------------------

    def acquire_submit(self, rate: float, burst: float | None = None) -> float:
        """Take one submission from the shared token bucket; seconds to wait (0: go)."""
        burst = burst if burst is not None else max(1.0, rate)
        wait = self._rate(keys=[keys.RATE, keys.COOLDOWN], args=[self.clock(), rate, burst])
        return float(wait)

    def cool_down(self, seconds: float) -> None:
        """Hold every worker's submissions for `seconds` (after a 429)."""
        until = self.clock() + seconds
        current = float(self.redis.get(keys.COOLDOWN) or 0)
        if until > current:
            self.redis.set(keys.COOLDOWN, str(until), ex=max(1, int(seconds) + 1))

    def record_duration(self, model: str, seconds: float, refill_time: float | None = None,
                        keep: int = 200) -> None:
        """Remember how long a remote job of `model` took, and for a refill how long after
        the end that freed its slot it ended (worker/pacing.py `Pacer.refill_aim`)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key, value in ((keys.durations(model), seconds),
                               (keys.refill_times(model), refill_time)):
                if value is not None:
                    pipe.lpush(key, f"{value:.3f}")
                    pipe.ltrim(key, 0, keep - 1)
            pipe.execute()

    def wait_for_timing(self, model: str, bid: str, iid: str, submitted: float,
                        ttl: int = 86_400) -> None:
        """Note an item submitted at `submitted` waiting for `model`'s first duration (see
        `take_waiting_for_timing`)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.waiting_untimed(model), {keys.member(bid, iid): submitted})
            pipe.expire(keys.waiting_untimed(model), ttl)
            pipe.execute()

    def take_waiting_for_timing(self, model: str) -> list[tuple[str, str]]:
        """Take the items noted as waiting for `model`'s timing, oldest submission first (the
        likeliest to be done): [(bid, iid)]."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrange(keys.waiting_untimed(model), 0, -1)
            pipe.delete(keys.waiting_untimed(model))
            return [keys.split_member(_text(m)) for m in pipe.execute()[0]]

    def wake_polls(self, items: Sequence[tuple[str, str]],
                   due: float) -> list[tuple[str, str, int]]:
        """Move the sleeping poll steps (none of their tasks running: deliveries 0) of
        `items` [(bid, iid)] on to a new step each, due by `due`, in one script call per
        chunk: [(bid, iid, new seq)] of those woken, in the order given. An item not sleeping
        (a task of it started meanwhile, it moved on, or it is not polling) is left out."""
        woken = []
        for start in range(0, len(items), _WAKE_CHUNK):
            chunk = items[start:start + _WAKE_CHUNK]
            out = self._wake(keys=[keys.DUE, *(keys.item(b, i) for b, i in chunk)],
                             args=[repr(self.clock()), repr(due),
                                   *(keys.member(b, i) for b, i in chunk)])
            pairs = zip(out[0::2], out[1::2], strict=True)
            woken += [(*chunk[int(at) - 1], int(seq)) for at, seq in pairs]
        return woken

    def recent_durations(self, model: str) -> list[float]:
        """Recent remote job durations of `model`, newest first."""
        return [float(_text(v)) for v in self.redis.lrange(keys.durations(model), 0, -1)]

    def recent_refill_times(self, model: str) -> list[float]:
        """Recent refill times of `model` (see `record_duration`), newest first."""
        return [float(_text(v)) for v in self.redis.lrange(keys.refill_times(model), 0, -1)]


def _target(who: StepRef | str, iid: str,
            guard: tuple[str, str] | None) -> tuple[str, str, tuple[str, str] | None]:
    """(bid, iid, guard) of a ref, or of the older `bid, iid, guard=` form."""
    if not isinstance(who, StepRef):
        return who, iid, guard
    if iid or guard is not None:
        raise TypeError("a step's ref names its item and carries its own guard")
    return who.bid, who.iid, who.guard


def _score(value: float | str | None) -> str:
    if value is None:
        return KEEP
    return value if isinstance(value, str) else repr(float(value))


def _field_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _chunks(items: Iterable[NewItem], size: int) -> Iterator[list[NewItem]]:
    chunk: list[NewItem] = []
    for spec in items:
        chunk.append(spec)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
