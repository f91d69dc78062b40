-- outbox.lua: reads or settles the oldest webhook event of one call.
-- KEYS: call hash, rec:in, rec:out, outbox
-- ARGV: op ('head', 'delivered', 'retry' or 'dead'), body (the event settled)
-- head returns {body or nil, attempts}. The others act only while `body` is still the
-- oldest event (a settle retried after a lost reply acts once): 'delivered' and 'dead'
-- remove it and reset the attempts, 'retry' counts an attempt. They return
-- {acted (1/0), attempts before, events left}.
local attempts = tonumber(redis.call('HGET', KEYS[1], 'ob_attempts') or '0')
if ARGV[1] == 'head' then
  return {redis.call('LINDEX', KEYS[4], 0), attempts}
end
if redis.call('LINDEX', KEYS[4], 0) ~= ARGV[2] then
  return {0, attempts, redis.call('LLEN', KEYS[4])}
end
-- The hash expires with the outbox; never recreate it without a TTL.
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] == 'retry' then
  if exists then redis.call('HINCRBY', KEYS[1], 'ob_attempts', 1) end
else
  redis.call('LPOP', KEYS[4])
  if exists then redis.call('HDEL', KEYS[1], 'ob_attempts') end
end
return {1, attempts, redis.call('LLEN', KEYS[4])}
