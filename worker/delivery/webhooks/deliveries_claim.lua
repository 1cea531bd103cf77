-- Lease the due deliveries (deliveries.py, DeliveryStore.claim_due): each claimed one is due again when its lease
-- runs out and carries a fresh lease token; ids whose hash expired leave the schedule.
-- KEYS[1]: the due-time schedule
-- ARGV: now, limit, lease end, delivery key prefix, lease token prefix. Returns id, lease, id, lease, ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(due) do
  local key = ARGV[4] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local lease = ARGV[5] .. ':' .. i
    redis.call('HSET', key, 'lease', lease)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, id)
    table.insert(out, lease)
  end
end
return out
