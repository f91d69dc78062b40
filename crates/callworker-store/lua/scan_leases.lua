-- scan_leases.lua: phase one of the reaper, on the index slot only.
-- KEYS: lease index (ZSET call_id -> score, never above the real lease)
-- ARGV: overdue_ms, offset, count
-- Returns {now, {member, score, member, score, ...}}: candidates whose indexed lease ran
-- out at least overdue_ms ago; the caller re-checks each one against its hash.
local now = now_ms()
local max = now - tonumber(ARGV[1])
local found = redis.call('ZRANGE', KEYS[1], '-inf', ms(max), 'BYSCORE', 'LIMIT', ARGV[2], ARGV[3],
                         'WITHSCORES')
return {now, found}
