-- The manifest object now shows sequence ARGV[1] (never moves back); ARGV[2] '1' once it says complete.
-- KEYS[1]: the backfill's manifest hash (worker/delivery/results/shardledger.py, ShardLedger.wrote_manifest).
local seen = tonumber(redis.call('HGET', KEYS[1], 'written_seq') or '-1')
if tonumber(ARGV[1]) > seen then redis.call('HSET', KEYS[1], 'written_seq', ARGV[1]) end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'complete', '1') end
return 1
