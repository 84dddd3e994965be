-- Brings a shard that was added, emptied or left behind up to date from
-- another shard's dump.  Entries merge in the order of rules_lib.lua, so a
-- value this shard holds that comes later is kept.
--
-- When the merge wrote anything, or this shard still differs from the dump
-- (it holds values the dump's shard lacks), the version goes past both: the
-- highest version moves, so every edge node drops the rules it cached (some
-- may have been read here while this shard lagged), and this shard is the
-- source of the next sync, which carries what only it held to the others.
--
-- KEYS[1]  the rules hash            ARGV[1]  the dump's version
-- KEYS[2]  the rules version         ARGV[2]  the dump's digest
--                                    ARGV[3..]  id, value, id, value, ...
-- Returns the number of entries written

local written = 0

for i = 3, #ARGV - 1, 2 do
    local id, value = ARGV[i], ARGV[i + 1]
    local old = redis.call('HGET', KEYS[1], id)

    if rl_after(value, old) then
        rl_store(id, old, value)
        written = written + 1
    end
end

local version = tonumber(redis.call('GET', KEYS[2]) or '0')
local wanted = tonumber(ARGV[1]) or 0
local differs = rl_digest() ~= ARGV[2]

if written == 0 and differs then
    -- nothing was missing here: the digest may be what is wrong (the hash
    -- edited by hand); made again from the entries, it tells
    redis.call('DEL', RL_DIGEST)
    differs = rl_digest() ~= ARGV[2]
end

if written > 0 or differs then
    redis.call('SET', KEYS[2], math.max(version, wanted) + 1)
elseif wanted > version then
    redis.call('SET', KEYS[2], wanted)
end

return written
