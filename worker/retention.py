"""Retention: a finished batch's records leave Redis after `Settings.retention`, a tombstone stays.

When a batch finishes (`Store.mark_inactive`), `seal` gives every key of the batch (record,
counts, order and pending lists, every item hash) one expiry: `finished_at + retention`, the
same millisecond for all, taken from the Redis clock inside a script. It also writes the
batch's tombstone (`keys.tombstone`): id, name, state, counts, total, spend, created,
finished, expires_at and the manifest's URL, so `rcbatch status` and `rcbatch ls` still answer
once the records are gone. The manifest in the bucket is the durable record.

The tombstone expires TOMBSTONE_KEEP after the records: long enough to answer "what happened
to last month's run, and where is its manifest", finite so that a nightly cron running for
years keeps Redis bounded. `sweep` then forgets the batch's id (`rcb:batches`) and name
(`rcb:names`); until then the name still leads to the tombstone, and a new batch under that
name gets a new id and takes the name over (`Store.batch_id_for_name`).

A batch that becomes active again (`revive`: a retry, or new items under its name) loses the
tombstone first, then every expiry: the item script below expires items only while the
tombstone exists, so a seal racing a revive cannot leave a live item with an expiry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from rcbatch.errors import InputError
from rcbatch.worker import keys

#: seconds a tombstone outlives its batch's records
TOMBSTONE_KEEP = 90 * 86_400
#: seconds between two sweeps for batches finished without an expiry (the process that takes
#: the `keys.RETENTION_SWEEP` flag runs it)
SWEEP_EVERY = 3_600
_CHUNK = 1_000
_TERMINAL = "{" + ",".join(f"'{s}'" for s in keys.PUBLIC_TERMINAL) + "}"

#: KEYS: batch, counts, pending, manifest_pending, tombstone, active.
#: ARGV: bid, ms until the records expire (<= 0: now), ms the tombstone outlives them, then
#: the tombstone's field/value pairs. Only a batch whose items are all terminal is sealed.
#: Returns -1 when it is not, else how many of its keys got the expiry.
_SEAL = f"""
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '-1')
if total < 0 then return -1 end
local ended = 0
for _, state in ipairs({_TERMINAL}) do
  ended = ended + tonumber(redis.call('HGET', KEYS[2], state) or '0')
end
if ended < total then return -1 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local at = now_ms + tonumber(ARGV[2])
if tonumber(ARGV[2]) <= 0 then at = now_ms - 1 end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[5], 'expire_at_ms', tostring(at), unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[5], at + tonumber(ARGV[3]))
local n = 0
for i = 1, 4 do
  if i ~= 4 or redis.call('PTTL', KEYS[4]) == -1 then
    n = n + redis.call('PEXPIREAT', KEYS[i], at)
  end
end
return n
"""
#: KEYS: tombstone, then keys to expire with it. Does nothing once the tombstone is gone
#: (the batch was revived). Returns how many keys got the expiry.
_EXPIRE_WITH = """
local at = redis.call('HGET', KEYS[1], 'expire_at_ms')
if not at then return 0 end
local n = 0
for i = 2, #KEYS do n = n + redis.call('PEXPIREAT', KEYS[i], at) end
return n
"""


class Store(Protocol):
    """What retention needs of `rcbatch.worker.state.Store` (which calls it, so it cannot be
    imported here without an import circle)."""

    redis: Any
    clock: Callable[[], float]
    retention: float

    def batch(self, bid: str) -> dict[str, str] | None:
        """The batch record, or None."""

    def counts(self, bid: str) -> dict[str, int]:
        """Counts per public state."""

    def is_finished(self, bid: str) -> bool:
        """Every item terminal."""

    def all_batches(self) -> list[str]:
        """Every batch id, oldest first."""


@dataclass(frozen=True)
class Pruned:
    """What `prune` dropped: how many batches, and how many Redis keys."""

    batches: int
    keys: int


@dataclass(frozen=True)
class Swept:
    """What `sweep` did: batches given their expiry, batches forgotten for good."""

    sealed: int
    forgotten: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def seal(store: Store, bid: str, at: float | None = None) -> int:
    """Let a finished batch's records expire at `at` (default: its `finished_at` plus the
    store's retention; a past time drops them now), take it off the active list and write its
    tombstone. Returns how many keys got the expiry; 0 when the batch is unknown or not every
    item is terminal (then nothing changed)."""
    record = store.batch(bid)
    if record is None:
        return 0
    finished = float(record.get("finished_at") or 0) or store.clock()
    at = finished + store.retention if at is None else at
    fields = tombstone_fields(bid, record, store.counts(bid), expires_at=at)
    ttl_ms = int((at - store.clock()) * 1000)
    batch_keys = [keys.batch(bid), keys.counts(bid), keys.pending(bid),
                  keys.manifest_pending(bid), keys.tombstone(bid), keys.ACTIVE]
    args: list[Any] = [bid, ttl_ms, TOMBSTONE_KEEP * 1000]
    for pair in fields.items():
        args += pair
    sealed = int(store.redis.eval(_SEAL, len(batch_keys), *batch_keys, *args))
    if sealed < 0:
        return 0
    return sealed + _expire_items(store, bid)


def _expire_items(store: Store, bid: str) -> int:
    """Give every item of a sealed batch, then its order list, the batch's expiry."""
    expire = store.redis.register_script(_EXPIRE_WITH)
    done = 0
    for ids in _id_chunks(store, bid):
        done += int(expire(keys=[keys.tombstone(bid), *(keys.item(bid, i) for i in ids)]))
    # the order list goes last: it is how the chunks above find the items
    return done + int(expire(keys=[keys.tombstone(bid), keys.order(bid)]))


def _id_chunks(store: Store, bid: str) -> Iterator[list[str]]:
    start = 0
    while ids := store.redis.lrange(keys.order(bid), start, start + _CHUNK - 1):
        yield [_text(i) for i in ids]
        start += _CHUNK


def revive(store: Store, bid: str) -> bool:
    """Remove a batch's expiry and tombstone (it is active again); True when it had them."""
    had = bool(store.redis.delete(keys.tombstone(bid)))  # first: stops a racing seal's items
    with store.redis.pipeline(transaction=False) as pipe:
        for key in (keys.batch(bid), keys.counts(bid), keys.pending(bid), keys.order(bid)):
            pipe.persist(key)
        had = any(pipe.execute()) or had
    for ids in _id_chunks(store, bid):
        with store.redis.pipeline(transaction=False) as pipe:
            for iid in ids:
                pipe.persist(keys.item(bid, iid))
            had = any(pipe.execute()) or had
    return had


def tombstone_fields(bid: str, record: dict[str, str], counts: dict[str, int], *,
                     expires_at: float) -> dict[str, str]:
    """The tombstone of a batch record: what `status` and `ls` show once it expired."""
    cancelled = record.get("state") == keys.BATCH_CANCELLED
    bucket_url = record.get("bucket_url", "")
    return {
        "id": bid, "name": record.get("name", ""),
        "state": keys.BATCH_CANCELLED if cancelled else keys.BATCH_FINISHED,
        "counts": json.dumps(counts, separators=(",", ":")), "total": record.get("total", "0"),
        "spend": record.get("reserved_cost", "0"), "created": record.get("created_at", ""),
        "finished": record.get("finished_at", ""), "expires_at": repr(float(expires_at)),
        "bucket_url": bucket_url,
        "manifest": f"{bucket_url.rstrip('/')}/{bid}/manifest.jsonl" if bucket_url else "",
    }


def tombstone(store: Store, bid: str) -> dict[str, str] | None:
    """A batch's tombstone (`tombstone_fields`), or None."""
    raw = store.redis.hgetall(keys.tombstone(bid))
    return {_text(k): _text(v) for k, v in raw.items()} if raw else None


def expired(store: Store, ref: str) -> dict[str, str] | None:
    """The tombstone of the expired batch `ref` (an id, or a name still leading to it), or
    None when `ref` names a live batch or nothing at all."""
    if store.batch(ref) is not None:
        return None
    stone = tombstone(store, ref)
    if stone is None:
        bid = store.redis.hget(keys.NAMES, ref)
        if bid is None or store.batch(_text(bid)) is not None:
            return None
        stone = tombstone(store, _text(bid))
    return stone


def prune(store: Store, older_than: float) -> Pruned:
    """Drop the records of every batch that finished at least `older_than` seconds ago, now,
    keeping their tombstones; a batch not finished is never touched."""
    cutoff = store.clock() - older_than
    batches = dropped = 0
    for bid in store.all_batches():
        if not _finished_before(store, bid, cutoff):
            continue
        count = seal(store, bid, at=store.clock())
        batches += count > 0
        dropped += count
    return Pruned(batches, dropped)


def _finished_before(store: Store, bid: str, cutoff: float) -> bool:
    """Whether the batch finished (every item terminal, off the active list) by `cutoff`."""
    record = store.batch(bid)
    if record is None or store.redis.zscore(keys.ACTIVE, bid) is not None:
        return False
    finished = record.get("finished_at") or ""
    return bool(finished) and float(finished) <= cutoff and store.is_finished(bid)


def sweep(store: Store, *, force: bool = False) -> Swept:
    """At most once per SWEEP_EVERY across processes (unless `force`): give batches that
    finished without an expiry (before retention existed, or a seal cut short) theirs, and
    forget ids and names whose records and tombstone are both gone."""
    if not force and not store.redis.set(keys.RETENTION_SWEEP, "1", nx=True, ex=SWEEP_EVERY):
        return Swept(0, 0)
    bids = store.all_batches()
    with store.redis.pipeline(transaction=False) as pipe:
        for bid in bids:
            pipe.pttl(keys.batch(bid))
            pipe.pttl(keys.order(bid))
            pipe.exists(keys.tombstone(bid))
            pipe.zscore(keys.ACTIVE, bid)
        answers = pipe.execute()
    sealed, dead = 0, []
    for n, bid in enumerate(bids):
        batch_ttl, order_ttl, stone, active = answers[4 * n:4 * n + 4]
        if batch_ttl == -2 and not stone:
            dead.append(bid)
        elif active is None and -1 in (batch_ttl, order_ttl) and store.is_finished(bid):
            sealed += seal(store, bid) > 0
    _forget(store, dead)
    return Swept(sealed, len(dead))


def _forget(store: Store, bids: list[str]) -> None:
    """Drop ids (and the names leading to them) whose records and tombstone are gone."""
    if not bids:
        return
    gone = set(bids)
    names = [_text(name) for name, bid in store.redis.hgetall(keys.NAMES).items()
             if _text(bid) in gone]
    with store.redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.BATCHES, *bids)
        if names:
            pipe.hdel(keys.NAMES, *names)
        pipe.execute()


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_age(text: str) -> float:
    """Seconds in an age such as `3d`, `12h`, `30m`, `45s` or `90`; InputError otherwise."""
    match = _AGE.match(text.lower())
    if not match:
        raise InputError(f"--older-than: {text!r} is not an age such as 3d, 12h, 30m or "
                         f"a number of seconds")
    return float(match[1]) * _UNIT[match[2]]
