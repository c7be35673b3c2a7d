"""The remote jobs of a model in the order they were submitted, so that one seen done can wake
the jobs submitted before it.

The API starts a token's jobs first in, first out. When every job of a model takes the same
time (a sweep: one model, one size), they also end in the order they were submitted, so a job
seen done tells that every job of the model submitted before it is done too. Without this,
the jobs that waited in the API's queue are seen late: their time since submission includes
the wait, so they end anywhere after the history's earliest end and are asked a latency gap
apart (worker/pacing.py), while their ends are what frees the API's slots of a wave. Measured
on `bench makespan` 1c (2 s waves at a cap of 100): those jobs were seen 0.16-0.57 s after
they ended, the others 0.07-0.16 s.

Only a job submitted while its model showed one time (`Pacer.uniform`) is noted, and a job
is woken this way at most once (`cascaded`): with durations that are not one time, an
earlier job need not be done, and each wake-up is a poll. A woken job is an ordinary poll
step, moved on exactly as `Store.wake_polls` moves a sleeping one (its planned poll becomes a
stale copy); a job whose poll is running or due within `soon` is left alone.
"""

from __future__ import annotations

from typing import Any

from rcbatch.worker import keys

#: seconds a model's set lives after its last job was noted (members of jobs that ended
#: without being seen done, such as cancelled ones, are dropped as wake-ups meet them)
SET_TTL = 86_400
#: jobs looked at per wake-up (the oldest first); the set of one model holds at most the
#: jobs in flight
_LOOK = 500

# KEYS: the model's set, the due set. ARGV: the member seen done, its score, now, the woken
# steps' due time, leave polls planned before this, '1' to wake (else only forget), how many
# to look at.
_SEEN_DONE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[6] ~= '1' then return {} end
local out = {}
local earlier = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                                  tonumber(ARGV[7]))
for _, m in ipairs(earlier) do
  local bid, iid = string.match(m, '^(.-)/(.*)$')
  local ikey = 'rcb:item:' .. bid .. ':' .. iid
  local v = redis.call('HMGET', ikey, 'state', 'seq', 'deliveries', 'poll_at', 'cascaded')
  if v[1] ~= 'submitted' and v[1] ~= 'running' then
    redis.call('ZREM', KEYS[1], m)
  elseif (not v[3] or v[3] == '0') and v[5] ~= '1'
         and tonumber(v[4] or '0') > tonumber(ARGV[5]) then
    local seq = tostring(tonumber(v[2] or '0') + 1)
    redis.call('HSET', ikey, 'seq', seq, 'poll_at', ARGV[3], 'cascaded', '1')
    redis.call('ZADD', KEYS[2], ARGV[4], m)
    redis.call('ZREM', KEYS[1], m)
    out[#out + 1] = m
    out[#out + 1] = seq
  end
end
return out
"""


class SubmitOrder:
    """Per model, the remote jobs noted at submission, scored by submission time."""

    def __init__(self, redis: Any) -> None:
        """`redis`: the client of the pipeline's state (worker/state.py `Store.redis`)."""
        self.redis = redis
        self._seen_done = redis.register_script(_SEEN_DONE)

    def note(self, model: str, bid: str, iid: str, submitted: float) -> None:
        """Note a job of `model` submitted at `submitted` (one round trip)."""
        name = keys.submit_order(model)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(name, {keys.member(bid, iid): submitted})
            pipe.expire(name, SET_TTL)
            pipe.execute()

    def seen_done(self, model: str, bid: str, iid: str, submitted: float, *, wake: bool,
                  now: float, due: float, soon: float) -> list[tuple[str, str, int]]:
        """Forget a noted job seen done; with `wake`, move the sleeping poll steps of the
        jobs submitted before it on to a new step each, due by `due`, and return them
        [(bid, iid, new seq)], earliest submitted first (one script call). Left alone: a job
        woken this way before, one whose poll is running, and one planned before `soon`."""
        out = self._seen_done(keys=[keys.submit_order(model), keys.DUE],
                              args=[keys.member(bid, iid), repr(submitted), repr(now),
                                    repr(due), repr(soon), "1" if wake else "0", _LOOK])
        woken = []
        for member, seq in zip(out[0::2], out[1::2], strict=True):
            text = member.decode() if isinstance(member, bytes) else member
            woken.append((*keys.split_member(text), int(seq)))
        return woken
