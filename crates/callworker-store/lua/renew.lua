-- renew.lua: fenced lease renewal.
-- KEYS: call hash, rec:in, rec:out
-- ARGV: epoch, lease_ms, live_ttl_ms
-- Returns {'OK', index_score}, {'NOTFOUND'}, {'ENDED', reason} or {'FENCED', current_epoch}.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'end_reason', 'idx')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[3]} end
if tonumber(h[2]) ~= tonumber(ARGV[1]) then return {'FENCED', tonumber(h[2])} end
local lease_ms = tonumber(ARGV[2])
local lease_until = now + lease_ms
redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'updated', ms(now))
return {'OK', refresh_index(h[4], lease_until, lease_ms, now, ARGV[3])}
