-- Undoes a rules_put on this shard after the same change failed on another
-- shard, so that the old rule stays in force everywhere.  Only the value
-- that write left is undone: a newer one stays.
--
-- KEYS[1]  the rules hash            ARGV[1]  customer id
-- KEYS[2]  the rules version         ARGV[2]  stamp of the write to undo
--                                    ARGV[3]  previous stored value, "" if none
-- Returns 1 if undone, 0 if a newer write is there

local now = redis.call('HGET', KEYS[1], ARGV[1])

if not now or string.match(now, '^(%d+) ') ~= ARGV[2] then
    return 0
end

if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
else
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end

redis.call('INCR', KEYS[2])

return 1
