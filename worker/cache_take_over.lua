-- Take over an in-flight lock from a holder known to be gone, if it still holds that holder's value (cache.py).
-- KEYS[1]: the lock; ARGV: the old holder's value, the new one, TTL ms. Returns OK, or nil when it changed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return false
