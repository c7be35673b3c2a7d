"""The Lua scripts behind every state change, so each change is one atomic step in Redis.

A Celery message is only a nudge: what a task may do is decided here, against the item's
record, so a duplicated, stale or lost message can never move an item twice or lose it.
"""

from __future__ import annotations

# Public state of each internal state; must match worker/keys.py PUBLIC_STATE.
_PUBLIC = """
local PUBLIC = {pending='pending', claimed='pending', submitting='pending',
  submitted='submitted', running='running', fetching='running', completed='completed',
  failed='failed', cancelled='cancelled', submit_uncertain='submit_uncertain'}
"""

# KEYS: item, counts, due, inflight
# ARGV: member, allowed states (space separated), guard field ('' = none), guard value,
#       new state ('' = keep), due ('' keep, '-' remove, else score),
#       inflight ('' keep, '-' release, else lease expiry score), then field/value pairs;
#       a value of '\0' deletes the field, a field starting with '+' is incremented.
TRANSITION = _PUBLIC + """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '%S+') do if s == cur then allowed = true end end
if not allowed then return {0, cur} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], ARGV[3]) ~= ARGV[4] then return {0, cur} end
local new = ARGV[5]
if new ~= '' and new ~= cur then
  redis.call('HSET', KEYS[1], 'state', new)
  if PUBLIC[cur] ~= PUBLIC[new] then
    redis.call('HINCRBY', KEYS[2], PUBLIC[cur], -1)
    redis.call('HINCRBY', KEYS[2], PUBLIC[new], 1)
  end
end
for i = 8, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  if string.sub(f, 1, 1) == '+' then
    redis.call('HINCRBY', KEYS[1], string.sub(f, 2), v)
  elseif v == '\\0' then
    redis.call('HDEL', KEYS[1], f)
  else
    redis.call('HSET', KEYS[1], f, v)
  end
end
if ARGV[6] == '-' then redis.call('ZREM', KEYS[3], ARGV[1])
elseif ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1]) end
if ARGV[7] == '-' then redis.call('ZREM', KEYS[4], ARGV[1])
elseif ARGV[7] ~= '' then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1]) end
return {1, cur}
"""

# A task starting its step: counts deliveries of the same step so a crash loop ends, and
# hands the step the item's record, its batch's state and how many of the batch's items are
# still to be submitted, in the same round trip.
# KEYS: item, batch, counts   ARGV: allowed states, guard field ('' none), guard value
BEGIN_STEP = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, '', 0} end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do if s == cur then allowed = true end end
if not allowed then return {0, cur, 0} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return {0, cur, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local batch = redis.call('HMGET', KEYS[2], 'state', 'discard', 'bucket_url')
batch[4] = redis.call('HGET', KEYS[3], 'pending')
return {1, cur, n, redis.call('HGETALL', KEYS[1]), batch}
"""

# Move the sleeping poll steps of several items (no task of theirs running: deliveries 0) on to
# a new step each, due by the due time; an item not sleeping is left alone.
# KEYS: due, then each item's record. ARGV: poll_at, due time, then each item's due member.
# -> {position among the items (1-based), its new seq} for each item woken
WAKE_POLLS = """
local out = {}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'state', 'seq', 'deliveries')
  if (v[1] == 'submitted' or v[1] == 'running') and (not v[3] or v[3] == '0') then
    local seq = tostring(tonumber(v[2] or '0') + 1)
    redis.call('HSET', KEYS[i], 'seq', seq, 'poll_at', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i + 1])
    out[#out + 1] = i - 1
    out[#out + 1] = seq
  end
end
return out
"""

# Take pending items of one batch while in-flight slots are free.
# KEYS: batch, pending, inflight, due, counts, tokens
# ARGV: now, cap, lease expiry, claim due, max claims, batch id
CLAIM = _PUBLIC + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local cap, limit = tonumber(ARGV[2]), tonumber(ARGV[5])
local out = {}
while #out < limit * 2 and redis.call('ZCARD', KEYS[3]) < cap do
  local iid = redis.call('LPOP', KEYS[2])
  if not iid then break end
  local ikey = 'rcb:item:' .. ARGV[6] .. ':' .. iid
  if redis.call('HGET', ikey, 'state') == 'pending' then
    local token = tostring(redis.call('INCR', KEYS[6]))
    redis.call('HSET', ikey, 'state', 'claimed', 'token', token, 'deliveries', 0)
    local m = ARGV[6] .. '/' .. iid
    redis.call('ZADD', KEYS[3], ARGV[3], m)
    redis.call('ZADD', KEYS[4], ARGV[4], m)
    table.insert(out, iid)
    table.insert(out, token)
  end
end
return out
"""

# Add a chunk of items to a batch, skipping those already registered (a resumed batch), in one
# atomic step and one round trip: no EXISTS per item, and each item sends only its own values.
# KEYS: batch, order, pending, counts
# ARGV: bid, C, C column names (the first is 'id'), K, K constant field/value pairs, then C
#       values per item; a value of '\0' leaves that field out of the item's record.
REGISTER = """
local bid, c = ARGV[1], tonumber(ARGV[2])
local k = tonumber(ARGV[3 + c])
local first = 4 + c + 2 * k
local added = {}
for at = first, #ARGV, c do
  local key = 'rcb:item:' .. bid .. ':' .. ARGV[at]
  if redis.call('EXISTS', key) == 0 then
    local args = {}
    for i = 1, c do
      local v = ARGV[at + i - 1]
      if v ~= '\\0' then
        args[#args + 1] = ARGV[2 + i]
        args[#args + 1] = v
      end
    end
    for i = 4 + c, 3 + c + 2 * k do args[#args + 1] = ARGV[i] end
    redis.call('HSET', key, unpack(args))
    added[#added + 1] = ARGV[at]
  end
end
if #added > 0 then
  redis.call('RPUSH', KEYS[2], unpack(added))
  redis.call('RPUSH', KEYS[3], unpack(added))
  redis.call('HINCRBY', KEYS[4], 'pending', #added)
  redis.call('HINCRBY', KEYS[1], 'total', #added)
end
return #added
"""

# A token bucket shared by every worker; answers how long to wait (0: go now).
# KEYS: bucket, cooldown   ARGV: now, rate per second, burst
RATE_ACQUIRE = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local until_ = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_ > now then return tostring(until_ - now) end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[3])
local ts = tonumber(redis.call('HGET', KEYS[1], 'ts') or ARGV[1])
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(wait)
"""

# Reserve an item's estimated cost against its batch's budget, once per item.
# KEYS: batch, item   ARGV: estimate   -> 1 reserved (or no budget), 0 over budget
RESERVE = """
if redis.call('HGET', KEYS[2], 'reserved') == '1' then return 1 end
local cap = redis.call('HGET', KEYS[1], 'max_cost')
local est = tonumber(ARGV[1])
if cap and cap ~= '' then
  local used = tonumber(redis.call('HGET', KEYS[1], 'reserved_cost') or '0')
  if used + est > tonumber(cap) + 1e-9 then return 0 end
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost', ARGV[1])
redis.call('HSET', KEYS[2], 'reserved', '1')
return 1
"""

# Give an item's reservation back (its submission certainly created no job).
# KEYS: batch, item   ARGV: estimate
REFUND = """
if redis.call('HGET', KEYS[2], 'reserved') ~= '1' then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost', -tonumber(ARGV[1]))
redis.call('HSET', KEYS[2], 'reserved', '0')
return 1
"""
