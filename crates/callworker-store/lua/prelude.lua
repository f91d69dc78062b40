-- Shared helpers, prepended to every script by redis_store.rs (one file per script on disk,
-- one self-contained script on the server). Times are Redis `TIME` in milliseconds, written
-- with '%.0f' so that no value is ever stored in Lua's exponent notation.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ms(x)
  return string.format('%.0f', x)
end

-- Appends `data` to the track at `key`, which holds `len` bytes (the hash's own count, or
-- STRLEN for a call written before the hash kept one), keeping the track at most `max` bytes.
-- A track created here gets the call's TTL; later TTL refreshes ride with refresh_index and
-- expire_call, so the hot path is one APPEND per track. Returns the track's new length and
-- whether audio had to be left out.
local function append_track(key, len, data, max, ttl_ms)
  if len == nil then len = redis.call('STRLEN', key) end
  if #data == 0 then return len, false end
  local room = max - len
  if room < 0 then room = 0 end
  local truncated = false
  if #data > room then
    truncated = true
    data = string.sub(data, 1, room)
  end
  if #data > 0 then
    local new_len = redis.call('APPEND', key, data)
    if new_len == #data then redis.call('PEXPIRE', key, ttl_ms) end
    len = new_len
  end
  return len, truncated
end

-- Appends both tracks (KEYS[2], KEYS[3]); `in_len`/`out_len` are the hash's `rec_in_len` and
-- `rec_out_len` (nil when unknown). Returns the `field, value, …` pairs the caller must HSET
-- into the call's hash with its own write: the new lengths, and `truncated` if a track
-- overflowed.
local function append_recording(inbound, outbound, max, ttl_ms, in_len, out_len)
  local a_len, a = append_track(KEYS[2], tonumber(in_len), inbound, max, ttl_ms)
  local b_len, b = append_track(KEYS[3], tonumber(out_len), outbound, max, ttl_ms)
  local fields = {'rec_in_len', a_len, 'rec_out_len', b_len}
  if a or b then
    fields[#fields + 1] = 'truncated'
    fields[#fields + 1] = '1'
  end
  return fields
end

-- Sets the TTL of every key of the call (hash, both recording tracks, webhook outbox).
local function expire_call(ttl_ms)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  redis.call('PEXPIRE', KEYS[3], ttl_ms)
  redis.call('PEXPIRE', KEYS[4], ttl_ms)
end

-- The webhook outbox (KEYS[4]): a LIST of event bodies, oldest first (outbox.rs). A body
-- is built like outbox::body in Rust; every part is a plain id, a number or JSON made by
-- the caller, so no escaping is needed.
local function event_body(id, typ, call_id, tenant, at, data)
  return '{"id":"' .. id .. '","type":"' .. typ .. '","call_id":"' .. call_id .. '","tenant":"' ..
    tenant .. '","at":' .. at .. ',"data":' .. data .. '}'
end

-- The events the caller passed as ARGV groups of five from `first`: type, bit, id, at, data.
local function argv_events(first)
  local events = {}
  local i = first
  while ARGV[i + 4] do
    events[#events + 1] = {ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]}
    i = i + 5
  end
  return events
end

-- Appends the `events` that the call's subscription mask `hooks` selects. Beyond `max`
-- undelivered events, events are dropped and counted in the hash's `ob_dropped`, unless
-- `force` (the end's own events, at most two per call). Returns the outbox's length (0
-- without a subscription, without reading it) and how many events were dropped.
local function enqueue(events, hooks, call_id, tenant, max, force, ttl_ms)
  local mask = tonumber(hooks) or 0
  if mask == 0 then return 0, 0 end
  local len = redis.call('LLEN', KEYS[4])
  local added = 0
  local dropped = 0
  for _, e in ipairs(events) do
    if bit.band(mask, e[2]) ~= 0 then
      if len >= max and not force then
        redis.call('HINCRBY', KEYS[1], 'ob_dropped', 1)
        dropped = dropped + 1
      else
        len = redis.call('RPUSH', KEYS[4], event_body(e[3], e[1], call_id, tenant, e[4], e[5]))
        added = added + 1
      end
    end
  end
  if added > 0 then redis.call('PEXPIRE', KEYS[4], ttl_ms) end
  return len, dropped
end

-- The end's own events: call.ended, and recording.ready when audio was recorded.
local function end_events(call_id, reason, now, in_len, out_len, truncated)
  local events = {{'call.ended', 8, call_id .. ':ended', ms(now), '{"reason":"' .. reason .. '"}'}}
  if in_len + out_len > 0 then
    local t = 'false'
    if truncated then t = 'true' end
    events[2] = {'recording.ready', 32, call_id .. ':recording', ms(now),
      '{"inbound_bytes":' .. in_len .. ',"outbound_bytes":' .. out_len .. ',"truncated":' .. t .. '}'}
  end
  return events
end

-- Decides whether the lease index must be rewritten after the lease moved to `lease_until`.
-- `idx` is the score last written to the index. The index may lag behind the lease (an
-- under-estimate only makes the reaper re-check a live call) but must never be above it,
-- so a lease that shrank below `idx` is always written. Otherwise it is rewritten only once
-- it is within a quarter lease of now, i.e. about every 3/4 lease per call. Returns the new
-- score to write, or 0 for "leave the index alone"; also refreshes the call's TTLs then,
-- which keeps that work off the per-checkpoint path as well.
local function refresh_index(idx, lease_until, lease_ms, now, live_ttl_ms)
  local i = tonumber(idx)
  if i ~= nil and i <= lease_until and i > now + lease_ms / 4 then return 0 end
  redis.call('HSET', KEYS[1], 'idx', ms(lease_until))
  expire_call(live_ttl_ms)
  return lease_until
end

