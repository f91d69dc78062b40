-- expire.lua: phase two of the reaper. Acts only if the epoch AND the lease still equal
-- the observation (nobody attached or renewed since).
-- KEYS: call hash, rec:in, rec:out
-- ARGV: observed_epoch, observed_lease, action ('end'/'extend'), reason, extend_ms,
--       ended_retention_ms, live_ttl_ms
-- Returns {'OK', epoch, new_lease_until or 0 after an end}, {'NOTFOUND'},
-- {'ENDED', reason} or {'STALE', current_epoch}. Idempotent by epoch and lease: a retried
-- end answers ENDED, a retried extend STALE (the lease moved), and neither acts twice.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'lease_until', 'created', 'end_reason')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[5]} end
local lease = tonumber(h[3] or h[4])
local epoch = tonumber(h[2])
if epoch ~= tonumber(ARGV[1]) or lease ~= tonumber(ARGV[2]) then return {'STALE', epoch} end
if ARGV[3] == 'end' then
  epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'status', 'ended', 'end_reason', ARGV[4], 'updated', ms(now))
  redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'idx')
  expire_call(ARGV[6])
  return {'OK', epoch, 0}
end
local lease_until = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'idx', ms(lease_until),
           'updated', ms(now))
expire_call(ARGV[7])
return {'OK', epoch, lease_until}
