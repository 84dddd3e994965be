-- Stores, replaces or deletes one customer's rule on this shard.
--
-- Every edge node writes a rule to every shard, so two admins changing the
-- same customer at once could reach the shards in different orders: the
-- value that comes last in the order of rules_lib.lua wins, on every shard
-- alike.  A deletion is kept as a tombstone ("<stamp> -") so that an older
-- write cannot revive it.  What the write replaced is kept for an hour
-- beside it, so rules_restore.lua can undo it on this shard without being
-- told what was there (the edge node may never have heard this shard's
-- answer).
--
-- KEYS[1]  the rules hash            ARGV[1]  the rule's field: customer
--                                             id [\x1f policy]
-- KEYS[2]  the rules version         ARGV[2]  stamp (integer)
--                                    ARGV[3]  "limit window algorithm" or "-"
-- Returns {previous stored value or "", rules version, 1 if written else 0}

if not string.match(ARGV[2], '^%d+$') then
    return redis.error_reply('ERR ratelimit: bad stamp')
end

local value = ARGV[2] .. ' ' .. ARGV[3]
local old = redis.call('HGET', KEYS[1], ARGV[1])

if old and not rl_after(value, old) then
    return {old, tonumber(redis.call('GET', KEYS[2]) or '0'), 0}
end

rl_store(ARGV[1], old, value)

redis.call('SET', KEYS[1] .. ':undo:' .. ARGV[1], value .. '\n' .. (old or ''),
           'EX', 3600)

return {old or '', redis.call('INCR', KEYS[2]), 1}
