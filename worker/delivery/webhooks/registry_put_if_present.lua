-- Replace a subscription's JSON only if the subscription still exists (registry.py: enable, disable).
-- KEYS[1]: the subscriptions hash; ARGV: subscription id, its new JSON. Returns 1 when replaced, 0 when gone.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
