-- checkpoint.lua: fenced checkpoint + recording append + webhook events + lease renewal.
-- KEYS: call hash, rec:in, rec:out, outbox
-- ARGV: epoch, seq, ckpt, lease_ms, live_ttl_ms, recording_track_bytes_max, rec_in, rec_out,
--       call_id, call_events_max, then webhook events in groups of five (see argv_events)
-- Returns {'OK', 0, index_score, outbox_len, events_dropped},
-- {'DUP', stored_seq, index_score, outbox_len, 0}, {'NOTFOUND'}, {'ENDED', reason} or
-- {'FENCED', current_epoch}. index_score 0 = leave the index alone; outbox_len > 0 = the
-- caller makes sure the call is in the outbox index.
-- Idempotent by seq: a seq not above the stored one stores and appends nothing (a retry).
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'ckpt_seq', 'end_reason', 'idx',
                    'rec_in_len', 'rec_out_len', 'hooks', 'tenant')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[4]} end
if tonumber(h[2]) ~= tonumber(ARGV[1]) then return {'FENCED', tonumber(h[2])} end
local lease_ms = tonumber(ARGV[4])
local lease_until = now + lease_ms
if h[3] and tonumber(ARGV[2]) <= tonumber(h[3]) then
  redis.call('HSET', KEYS[1], 'lease_until', ms(lease_until), 'updated', ms(now))
  local score = refresh_index(h[5], lease_until, lease_ms, now, ARGV[5])
  local ob = enqueue({}, h[8], ARGV[9], h[9], 0, false, ARGV[5])
  return {'DUP', h[3], score, ob, 0}
end
local rec = append_recording(ARGV[7], ARGV[8], tonumber(ARGV[6]), ARGV[5], h[6], h[7])
redis.call('HSET', KEYS[1], 'ckpt_seq', ARGV[2], 'ckpt', ARGV[3],
           'lease_until', ms(lease_until), 'updated', ms(now), unpack(rec))
local score = refresh_index(h[5], lease_until, lease_ms, now, ARGV[5])
local ob, dropped = enqueue(argv_events(11), h[8], ARGV[9], h[9], tonumber(ARGV[10]), false, ARGV[5])
return {'OK', 0, score, ob, dropped}
