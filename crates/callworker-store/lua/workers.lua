-- workers.lua: prunes lapsed workers and lists the rest; on the index slot only.
-- KEYS: workers ZSET (worker_id -> lapse time)
-- ARGV: max_workers
-- Returns the ids of workers whose heartbeat has not lapsed.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now))
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
