-- create.lua: stores a new call at epoch 0, status created.
-- KEYS: call hash, rec:in, rec:out
-- ARGV: tenant, ckpt_seq, ckpt, live_ttl_ms, hooks (the tenant's webhook mask, 0 = none)
-- Returns {'OK', created} or {'EXISTS', created, status}: the caller repairs the indexes of an
-- existing call, so that a create retried after a lost reply still leaves the call indexed.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'created', 'status')
if h[2] then return {'EXISTS', tonumber(h[1]), h[2]} end
redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'status', 'created', 'epoch', 0,
           'created', ms(now), 'updated', ms(now), 'ckpt_seq', ARGV[2], 'ckpt', ARGV[3],
           'idx', ms(now), 'rec_in_len', 0, 'rec_out_len', 0)
if tonumber(ARGV[5]) > 0 then redis.call('HSET', KEYS[1], 'hooks', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'OK', now}
