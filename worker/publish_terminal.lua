-- The terminal event (publish.py, Publisher.publish); runs after publish_finished.lua.
-- KEYS: guard, stream, job, legacy open index, running index
-- ARGV: event, maxlen, interactive ttl, state, stream field, callback url, job id, open prefix, bulk ttl, min id
local queue = redis.call('HGET', KEYS[3], 'queue')
redis.call('ZREM', KEYS[4], ARGV[7])
redis.call('ZREM', KEYS[5], ARGV[7])
if queue then redis.call('ZREM', ARGV[8] .. queue, ARGV[7]) end
if finished(KEYS[3], KEYS[1]) then
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'duplicate_deliveries', 1) end
  return false
end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[5], ARGV[1])
if ARGV[10] ~= '' then redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[10]) end
-- What status and dedupe need (schemas.records.JOB_FINISHED_FIELDS); deliveries only past the attempts.
local names = {'tenant', 'attempts', 'deliveries', 'backfill_id', 'worker', 'queue', 'duplicate_deliveries',
  'reconciled'}
local kept = redis.call('HMGET', KEYS[3], unpack(names))
redis.call('DEL', KEYS[3])
local record = {'state', ARGV[4], 'stream_id', sid}
for i, name in ipairs(names) do
  local value = kept[i]
  if value and not (name == 'deliveries' and value == kept[2]) then
    record[#record + 1] = name
    record[#record + 1] = value
  end
end
if ARGV[6] ~= '' then
  record[#record + 1] = 'callback_url'
  record[#record + 1] = ARGV[6]
end
redis.call('HSET', KEYS[3], unpack(record))
redis.call('EXPIRE', KEYS[3], kept[4] and ARGV[9] or ARGV[3])
return sid
