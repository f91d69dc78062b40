-- end.lua: fenced end; bumps the epoch so that nothing writes after it. Writes the
-- final checkpoint's webhook events, then the end's own (call.ended, recording.ready).
-- KEYS: call hash, rec:in, rec:out, outbox
-- ARGV: epoch, reason, has_final ('1'/'0'), final_seq, final_ckpt, ended_retention_ms,
--       recording_track_bytes_max, rec_in, rec_out, call_id, call_events_max, then webhook
--       events in groups of five (see argv_events)
-- Returns {'OK', new_epoch, outbox_len, events_dropped}, {'NOTFOUND'}, {'ENDED', first_reason} or
-- {'FENCED', current_epoch}. Idempotent by epoch: a retry after a lost reply answers ENDED
-- with this end's reason. The caller indexes the outbox, then removes the call from the
-- lease index, after OK/ENDED (in that order: see the reaper's re-check).
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'ckpt_seq', 'end_reason',
                    'rec_in_len', 'rec_out_len', 'hooks', 'tenant', 'truncated')
if not h[1] then return {'NOTFOUND'} end
if h[1] == 'ended' then return {'ENDED', h[4]} end
if tonumber(h[2]) ~= tonumber(ARGV[1]) then return {'FENCED', tonumber(h[2])} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'ended', 'end_reason', ARGV[2], 'updated', ms(now))
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'idx')
if ARGV[3] == '1' and (not h[3] or tonumber(ARGV[4]) > tonumber(h[3])) then
  redis.call('HSET', KEYS[1], 'ckpt_seq', ARGV[4], 'ckpt', ARGV[5])
end
local rec = append_recording(ARGV[8], ARGV[9], tonumber(ARGV[7]), ARGV[6], h[5], h[6])
redis.call('HSET', KEYS[1], unpack(rec))
expire_call(ARGV[6])
local max = tonumber(ARGV[11])
local _, dropped = enqueue(argv_events(12), h[7], ARGV[10], h[8], max, false, ARGV[6])
local own = end_events(ARGV[10], ARGV[2], now, rec[2], rec[4], rec[5] == 'truncated' or h[9] == '1')
local ob = enqueue(own, h[7], ARGV[10], h[8], max, true, ARGV[6])
return {'OK', epoch, ob, dropped}
