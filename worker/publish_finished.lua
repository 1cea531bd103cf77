-- Prelude of publish_terminal.lua, publish_begin.lua and publish_requeue.lua: has the job its terminal event?
-- (the hash's state completed/failed is the publish guard; a guard key of its own for WRONGTYPE records)
local function finished(job, guard)
  local st = redis.call('HGET', job, 'state')
  return st == 'completed' or st == 'failed' or redis.call('EXISTS', guard) == 1
end
