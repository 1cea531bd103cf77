-- Release the run lease only if this process still holds it (RunLease.release).
-- KEYS[1]: the lease; ARGV[1]: this process's value.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
