-- Stores, replaces or deletes one customer's rule on this shard.
--
-- Every edge node writes a rule to every shard, so two admins changing the
-- same customer at once could reach the shards in different orders: the
-- write with the larger stamp wins, on every shard alike.  A deletion is
-- kept as a tombstone ("<stamp> -") so that an older write cannot revive it.
--
-- KEYS[1]  the rules hash            ARGV[1]  customer id
-- KEYS[2]  the rules version         ARGV[2]  stamp (integer)
--                                    ARGV[3]  "limit window algorithm" or "-"
-- Returns {previous stored value or "", rules version, 1 if written else 0}

local stamp = tonumber(ARGV[2])
if not stamp then
    return redis.error_reply('ERR ratelimit: bad stamp')
end

local old = redis.call('HGET', KEYS[1], ARGV[1])

if old then
    local old_stamp = tonumber(string.match(old, '^(%d+) '))
    if old_stamp and old_stamp > stamp then
        return {old, tonumber(redis.call('GET', KEYS[2]) or '0'), 0}
    end
end

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])

return {old or '', redis.call('INCR', KEYS[2]), 1}
