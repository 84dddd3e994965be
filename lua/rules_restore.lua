-- Undoes a rules_put on this shard after the same change failed on another
-- shard, so that the old rule stays in force everywhere.
--
-- The undo keeps the write's stamp and stores "<stamp> ~<body before>": in
-- the order of rules_lib.lua it beats the write itself, so the write cannot
-- land after it, and wherever the undo is missing (a shard that never heard
-- it) the rules poll carries it over instead of the write.  If the write has
-- not landed here yet (it is on a connection the edge node gave up on), the
-- undo goes first and the write will find it.  A newer value stays.
--
-- KEYS[1]  the rules hash            ARGV[1]  the rule's field: customer
--                                             id [\x1f policy]
-- KEYS[2]  the rules version         ARGV[2]  stamp of the write to undo
--                                    ARGV[3]  its "limit window algorithm"
--                                             or "-"
-- Returns 1 if undone (or voided before it landed), 0 if a newer value is
-- there or this shard cannot tell what the write replaced

if not string.match(ARGV[2], '^%d+$') then
    return redis.error_reply('ERR ratelimit: bad stamp')
end

local write = ARGV[2] .. ' ' .. ARGV[3]
local undo = KEYS[1] .. ':undo:' .. ARGV[1]
local now = redis.call('HGET', KEYS[1], ARGV[1])
local before

if now == write then
    local saved = redis.call('GET', undo)
    if not saved or string.sub(saved, 1, #write + 1) ~= write .. '\n' then
        -- came here by a sync: the shard that took it directly undoes it
        return 0
    end
    before = string.sub(saved, #write + 2)

elseif not now or rl_after(write, now) then
    before = now or ''

else
    return 0
end

local body = '-'

if before ~= '' then
    local _, rest = rl_split(before)
    if rest then
        body = string.gsub(rest, '^~', '')
    end
end

rl_store(ARGV[1], now, ARGV[2] .. ' ~' .. body)
redis.call('DEL', undo)
redis.call('INCR', KEYS[2])

return 1
