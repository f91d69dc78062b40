-- heartbeat.lua: announces a worker; on the index slot only.
-- KEYS: workers ZSET (worker_id -> lapse time), worker hash
-- ARGV: worker_id, info (JSON), ttl_ms
-- Returns the heartbeat time (Redis clock).
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], 'info', ARGV[2], 'heartbeat_at', ms(now))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], ms(now + ttl), ARGV[1])
return now
