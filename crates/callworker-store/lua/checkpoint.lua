-- checkpoint.lua: fenced checkpoint + recording append + lease renewal.
-- KEYS: call hash, rec:in, rec:out
-- ARGV: epoch, seq, ckpt, lease_ms, live_ttl_ms, recording_track_bytes_max, rec_in, rec_out
-- Returns {'OK', 0, index_score}, {'DUP', stored_seq, index_score}, {'NOTFOUND'},
-- {'ENDED', reason} or {'FENCED', current_epoch}. index_score 0 = leave the index alone.
-- Idempotent by seq: a seq not above the stored one stores and appends nothing (a retry).
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'ckpt_seq', 'end_reason', 'idx',
                    'rec_in_len', 'rec_out_len')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[4]} end
if tonumber(h[2]) ~= tonumber(ARGV[1]) then return {'FENCED', tonumber(h[2])} end
local lease_ms = tonumber(ARGV[4])
local lease_until = now + lease_ms
if h[3] and tonumber(ARGV[2]) <= tonumber(h[3]) then
  redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'updated', ms(now))
  local score = refresh_index(h[5], lease_until, lease_ms, now, ARGV[5])
  return {'DUP', h[3], score}
end
local rec = append_recording(ARGV[7], ARGV[8], tonumber(ARGV[6]), ARGV[5], h[6], h[7])
redis.call('HSET', KEYS[1], 'ckpt_seq', ARGV[2], 'ckpt', ARGV[3],
           'lease_until', ms(lease_until), 'updated', ms(now), unpack(rec))
local score = refresh_index(h[5], lease_until, lease_ms, now, ARGV[5])
return {'OK', 0, score}
