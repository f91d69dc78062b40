-- outbox_index.lua: the calls with webhook events to deliver; on the index slot only.
-- KEYS: outbox index (ZSET call_id -> when due, or when its claim lapses), dead letters (LIST)
-- ARGV: op, then
--   'claim', limit, lease_ms: leases up to `limit` due calls until now + lease_ms; returns
--     {token, {call_id, ...}} (token = the claims' score, which identifies them)
--   'release', call_id, token, delay_ms or 'remove': while the claim is current, removes
--     the call or makes it due after delay_ms; returns 1, or 0 for a lapsed claim
--   'dead', body, reason, attempts, dead_letters_max: pushes a dead letter, newest first,
--     dropping the oldest beyond the bound; returns the list's length
local now = now_ms()
local op = ARGV[1]
if op == 'claim' then
  local token = now + tonumber(ARGV[3])
  local ids = redis.call('ZRANGE', KEYS[1], '-inf', ms(now), 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
  for _, id in ipairs(ids) do
    redis.call('ZADD', KEYS[1], ms(token), id)
  end
  return {token, ids}
elseif op == 'release' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
  if not score or tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
  if ARGV[4] == 'remove' then
    redis.call('ZREM', KEYS[1], ARGV[2])
  else
    redis.call('ZADD', KEYS[1], ms(now + tonumber(ARGV[4])), ARGV[2])
  end
  return 1
elseif op == 'dead' then
  redis.call('LPUSH', KEYS[2], '{"event":' .. ARGV[2] .. ',"reason":"' .. ARGV[3] .. '","attempts":' ..
             ARGV[4] .. ',"at":' .. ms(now) .. '}')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
  return redis.call('LLEN', KEYS[2])
end
return redis.error_reply('unknown op')
