-- expire.lua: phase two of the reaper. Acts only if the epoch AND the lease still equal
-- the observation (nobody attached or renewed since).
-- KEYS: call hash, rec:in, rec:out
-- ARGV: observed_epoch, observed_lease, action ('end'/'extend'), reason, extend_ms,
--       ended_retention_ms, live_ttl_ms, call_id
-- Returns {'OK', epoch, new_lease_until or 0 after an end, outbox_len}, {'NOTFOUND'},
-- {'ENDED', reason} or {'STALE', current_epoch}. Idempotent by epoch and lease: a retried
-- end answers ENDED, a retried extend STALE (the lease moved), and neither acts twice.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'lease_until', 'created', 'end_reason',
                    'hooks', 'tenant', 'rec_in_len', 'rec_out_len', 'truncated')
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
  local in_len = tonumber(h[8]) or redis.call('STRLEN', KEYS[2])
  local out_len = tonumber(h[9]) or redis.call('STRLEN', KEYS[3])
  local own = end_events(ARGV[8], ARGV[4], now, in_len, out_len, h[10] == '1')
  local ob = enqueue(own, h[6], ARGV[8], h[7], 0, true, ARGV[6])
  return {'OK', epoch, 0, ob}
end
local lease_until = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'idx', ms(lease_until),
           'updated', ms(now))
expire_call(ARGV[7])
return {'OK', epoch, lease_until, 0}
