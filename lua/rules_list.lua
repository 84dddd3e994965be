-- Lists the rules in force, a page at a time, in the byte order of their
-- fields (customer id, then "\x1f<policy>" for a policy's rule: a
-- customer's rules are listed together, its rule for every policy first).
--
-- The fields come from the index rl:rules:index (rules_lib.lua), whose
-- ZRANGEBYLEX order is that of memcmp, from just after the last field of
-- the page before: a page costs O(log N + what it scans), the order does
-- not depend on the locale, and paging on while rules are added or deleted
-- lists every rule that stays once, in order.
--
-- An index that holds fewer fields than the hash (rules stored by an older
-- version of the module, or the index lost) is made again from the hash,
-- in steps of about 5 ms of the server's time (HSCAN, its cursor kept in
-- rl:rules:index:scan between calls): with 100000 rules the whole of it
-- would hold every check waiting on this shard for some 200 ms, past their
-- timeout.  Until it is whole, a call answers {-1, fields indexed, fields
-- in the hash} and lists nothing.  An index that holds more fields than the
-- hash (the hash lost) is dropped and made again.
--
-- Deleted and undone-to-deleted fields, garbled values and rules whose
-- expiry is at or before the server's TIME are skipped, and at most
-- 10 * size + 100 fields are looked at per call: a page may hold fewer
-- rules than asked, and only more = 0 says the list is over.
--
-- KEYS[1]  the rules hash            ARGV[1]  the last field of the page
-- KEYS[2]  the rules version                  before, '' for the first
--                                    ARGV[2]  the page size, 1 to 1000
-- Returns {more (0 or 1), the last field looked at, field, value, ...}, or
-- {-1, fields indexed, fields in the hash} while the index is being made

local index = KEYS[1] .. ':index'
local size = tonumber(ARGV[2])

if not size or size < 1 or size > 1000 or size % 1 ~= 0 then
    return redis.error_reply('ERR ratelimit: bad page size')
end

local scan = index .. ':scan'
local cursor = redis.call('GET', scan)

if not cursor then
    local indexed, fields = redis.call('ZCARD', index),
                            redis.call('HLEN', KEYS[1])
    if indexed > fields then
        redis.call('DEL', index)
        indexed = 0
    end
    if indexed < fields then
        cursor = '0'
    end
end

if cursor then
    local t = redis.call('TIME')
    local start = t[1] * 1000000 + t[2]
    repeat
        local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 500)
        cursor = r[1]
        local args = {}
        for i = 1, #r[2], 2 do
            args[#args + 1] = 0
            args[#args + 1] = r[2][i]
        end
        if #args > 0 then
            redis.call('ZADD', index, unpack(args))
        end
        t = redis.call('TIME')
    until cursor == '0' or t[1] * 1000000 + t[2] - start >= 5000
    if cursor ~= '0' then
        redis.call('SET', scan, cursor, 'EX', 3600)
        return {-1, redis.call('ZCARD', index), redis.call('HLEN', KEYS[1])}
    end
    redis.call('DEL', scan)
end

local now = tonumber(redis.call('TIME')[1])
local out = {0, ''}
local found = 0
local budget = 10 * size + 100
local from = ARGV[1] == '' and '-' or '(' .. ARGV[1]
local match = string.match

while budget > 0 do
    local chunk = math.min(budget, size - found + 16)
    local fields = redis.call('ZRANGEBYLEX', index, from, '+', 'LIMIT', 0,
                              chunk)
    if #fields == 0 then
        return out
    end
    local values = redis.call('HMGET', KEYS[1], unpack(fields))
    for i = 1, #fields do
        local v = values[i]
        budget = budget - 1
        out[2] = fields[i]
        -- a rule: a limit after the stamp (and "~"), and an expiry, if
        -- any, still ahead
        if v and match(v, '^%d+ ~?[1-9]') then
            local ex = match(v, ' ([1-9]%d*)$')
            local _, spaces = string.gsub(v, " ", "")
            if spaces < 4 or (ex and ex + 0 > now) then
                out[#out + 1] = fields[i]
                out[#out + 1] = v
                found = found + 1
            end
        end
        if found == size or budget == 0 then
            if i < #fields or #redis.call('ZRANGEBYLEX', index,
                                          '(' .. fields[i], '+',
                                          'LIMIT', 0, 1) > 0 then
                out[1] = 1
            end
            return out
        end
    end
    if #fields < chunk then
        return out
    end
    from = '(' .. out[2]
end

return out
