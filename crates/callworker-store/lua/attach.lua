-- attach.lua: takeover by compare-and-set on the epoch; bumps it; idempotent by attempt id.
-- KEYS: call hash, rec:in, rec:out
-- ARGV: attempt, expected_epoch, owner, lease_ms, live_ttl_ms
-- Returns {'OK', epoch, index_score, <HGETALL of the call>}, {'NOTFOUND'},
-- {'ENDED', reason} or {'STALE', current_epoch}.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'attempt', 'end_reason', 'idx')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[4]} end
local cur = tonumber(h[2])
local expected = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[4])
local lease_until = now + lease_ms
if cur == expected + 1 and h[3] == ARGV[1] then
  -- Our own takeover whose reply was lost: answer it again (and renew: the owner is alive).
  redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'updated', ms(now))
  local score = refresh_index(h[5], lease_until, lease_ms, now, ARGV[5])
  return {'OK', cur, score, redis.call('HGETALL', KEYS[1])}
end
if cur ~= expected then return {'STALE', cur} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'active', 'owner', ARGV[3], 'attempt', ARGV[1],
           'lease_until', ms(lease_until), 'updated', ms(now), 'idx', ms(lease_until))
expire_call(ARGV[5])
return {'OK', epoch, lease_until, redis.call('HGETALL', KEYS[1])}
