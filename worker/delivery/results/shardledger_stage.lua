-- Stage one shard's rows and ack their stream entries (worker/delivery/results/shardledger.py, ShardLedger.stage).
-- KEYS: written files of the backfill, the shard's staging hash, the verdict stream
-- ARGV: shard key, consumer group, JSON list of stream ids, staging TTL, then job id, row JSON pairs
-- A job's row is staged once (HSETNX); nothing is staged for a shard whose file is already written.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  for i = 5, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('XACK', KEYS[3], ARGV[2], unpack(cjson.decode(ARGV[3])))
return redis.call('HLEN', KEYS[2])
