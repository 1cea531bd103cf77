-- Settle one attempt if the caller still holds the lease (deliveries.py, DeliveryStore.settle).
-- KEYS: the delivery's hash, the due-time schedule, the webhook dead-letter stream
-- ARGV: lease, new state, attempts, last status, last error / reason, time, next due time, delivery id, DLQ maxlen
-- Returns 0 for a stale lease (nothing changes), 1 otherwise.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', '', 'state', ARGV[2], 'attempts', ARGV[3], 'last_status', ARGV[4],
           'last_error', ARGV[5], 'updated_at', ARGV[6])
if ARGV[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[8])
if ARGV[2] == 'dead' then
  redis.call('HSET', KEYS[1], 'reason', ARGV[5])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'delivery_id', ARGV[8], 'reason', ARGV[5],
             'attempts', ARGV[3], 'last_status', ARGV[4], 'failed_at', ARGV[6], 'record', redis.call('HGET', KEYS[1], 'record'),
             'event', redis.call('HGET', KEYS[1], 'body'))
end
return 1
