-- Prelude of publish_begin.lua and publish_requeue.lua: `now`, Redis server time in seconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
