-- Take over a lease left by a dead process on this host, if it still holds that value (RunLease.acquire).
-- KEYS[1]: the lease; ARGV: the dead holder's value, this process's value, TTL seconds.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
