-- Create a delivery once and put it on the schedule (deliveries.py, DeliveryStore.create).
-- KEYS: the delivery's hash, the due-time schedule
-- ARGV: record JSON, body, due time, record TTL, delivery id. Returns 1 if created, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'body', ARGV[2], 'attempts', 0, 'state', 'pending',
           'next_at', ARGV[3], 'lease', '')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1
