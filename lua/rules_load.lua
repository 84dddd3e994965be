-- Brings a shard that was added, emptied or left behind up to date from
-- another shard's dump.  Entries merge by stamp, so a newer rule this shard
-- already holds is kept.
--
-- KEYS[1]  the rules hash            ARGV[1]  the dump's version
-- KEYS[2]  the rules version         ARGV[2..]  id, value, id, value, ...
-- Returns the number of entries written

local written = 0

for i = 2, #ARGV - 1, 2 do
    local id, value = ARGV[i], ARGV[i + 1]
    local stamp = tonumber(string.match(value, '^(%d+) '))
    local old = redis.call('HGET', KEYS[1], id)
    local old_stamp = old and tonumber(string.match(old, '^(%d+) '))

    if stamp and (not old_stamp or old_stamp < stamp) then
        redis.call('HSET', KEYS[1], id, value)
        written = written + 1
    end
end

local version = tonumber(redis.call('GET', KEYS[2]) or '0')
local wanted = tonumber(ARGV[1])

if wanted and wanted > version then
    redis.call('SET', KEYS[2], wanted)
elseif written > 0 then
    redis.call('INCR', KEYS[2])
end

return written
