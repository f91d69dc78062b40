-- end.lua: fenced end; bumps the epoch so that nothing writes after it.
-- KEYS: call hash, rec:in, rec:out
-- ARGV: epoch, reason, has_final ('1'/'0'), final_seq, final_ckpt, ended_retention_ms,
--       recording_track_bytes_max, rec_in, rec_out
-- Returns {'OK', new_epoch}, {'NOTFOUND'}, {'ENDED', first_reason} or
-- {'FENCED', current_epoch}. Idempotent by epoch: a retry after a lost reply answers ENDED
-- with this end's reason. The caller removes the call from the lease index after OK/ENDED.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'ckpt_seq', 'end_reason',
                    'rec_in_len', 'rec_out_len')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[4]} end
if tonumber(h[2]) ~= tonumber(ARGV[1]) then return {'FENCED', tonumber(h[2])} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'ended', 'end_reason', ARGV[2], 'updated', ms(now))
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'idx')
if ARGV[3] == '1' and (not h[3] or tonumber(ARGV[4]) > tonumber(h[3])) then
  redis.call('HSET', KEYS[1], 'ckpt_seq', ARGV[4], 'ckpt', ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(append_recording(ARGV[8], ARGV[9], tonumber(ARGV[7]), ARGV[6], h[5], h[6])))
expire_call(ARGV[6])
return {'OK', epoch}
