-- Gives back what checks of check.lua took (contract: lua/README.md): when
-- a request's checks span two shards and the second denied, the first
-- shard's are returned.  KEYS[i] is the counter key of check i; its 5
-- arguments are ARGV[5*i-4 .. 5*i]: algorithm (tb | sw), limit, window_ms,
-- cost, at_ms (the now_ms the check.lua call that took it answered).
-- Returns {refunded, now_ms}: how many checks gave something back.
--
-- Token bucket: cost * w comes off the usage u (w the window the state is
-- counted in), floored at 0; ts stays.  Usage drains at a constant rate
-- until it is 0, so what is left after taking less is exactly what would
-- be left had it never been taken, unless the bucket has refilled past
-- it meanwhile (then full is what it would be).  Sliding window: cost
-- comes off the count of the window at_ms fell in, if the state still
-- holds it (as the current or, one window later, as the previous count),
-- floored at 0.  A missing key, a state that cannot be trusted (as
-- check.lua reads it) or another window length: nothing.  The TTL stays
-- (KEEPTTL): it was set for at least as much as is left now.  Rare calls:
-- kept simple rather than cheap.

-- RL_MAX_LIMIT, RL_MIN_WINDOW_MS and RL_MAX_WINDOW_MS are set by lines the
-- module puts in front of this file (as for check.lua).

local n = #KEYS
if n < 1 or n > 1024 then
    return redis.error_reply('ERR ratelimit: need 1 to 1024 keys')
end
if #ARGV ~= 5 * n then
    return redis.error_reply('ERR ratelimit: need 5 arguments per key')
end

local function digits(s)
    return string.find(s, '^%d+$') and s + 0
end

-- Every argument is checked before anything is written.
for i = 1, n do
    local a = 5 * i - 5
    local what
    local alg = ARGV[a + 1]
    local L, W = digits(ARGV[a + 2]), digits(ARGV[a + 3])
    local c, at = digits(ARGV[a + 4]), digits(ARGV[a + 5])
    if alg ~= 'tb' and alg ~= 'sw' then
        what = 'algorithm'
    elseif not L or L < 1 or L > RL_MAX_LIMIT then
        what = 'limit'
    elseif not W or W < RL_MIN_WINDOW_MS or W > RL_MAX_WINDOW_MS then
        what = 'window'
    elseif not c or c > RL_MAX_LIMIT then
        what = 'cost'
    elseif not at then
        what = 'time'
    end
    if what then
        return redis.error_reply('ERR ratelimit: bad ' .. what .. ' (check '
                                 .. i .. ')')
    end
end

local t = redis.call('TIME')
local us = t[2] + 0
local now = t[1] * 1000 + (us - us % 1000) / 1000

local refunded = 0
for i = 1, n do
    local a = 5 * i - 5
    local key = KEYS[i]
    local W, c, at = ARGV[a + 3] + 0, ARGV[a + 4] + 0, ARGV[a + 5] + 0
    -- Not a string (an error table), or of another length: nothing.
    local v = redis.pcall('GET', key)
    if c > 0 and type(v) == 'string' then
        if ARGV[a + 1] == 'tb' and #v == 24 then
            local ts, u, w = struct.unpack('<ddd', v)
            if ts >= 0 and ts <= now + w and ts % 1 == 0
                    and u > 0 and u <= RL_MAX_LIMIT * RL_MAX_WINDOW_MS
                    and u % 1 == 0
                    and w >= RL_MIN_WINDOW_MS and w <= RL_MAX_WINDOW_MS
                    and w % 1 == 0 then
                u = u - c * w
                if u < 0 then u = 0 end
                redis.call('SET', key, struct.pack('<ddd', ts, u, w),
                           'KEEPTTL')
                refunded = refunded + 1
            end
        elseif ARGV[a + 1] == 'sw' and #v == 32 then
            local win, cur, prev, w = struct.unpack('<dddd', v)
            -- floor(at / W), as check.lua computes its window index
            local idx = at / W
            idx = idx - idx % 1
            if idx * W > at then idx = idx - 1 end
            if w == W and win >= 0 and win % 1 == 0
                    and cur >= 0 and cur <= RL_MAX_LIMIT and cur % 1 == 0
                    and prev >= 0 and prev <= RL_MAX_LIMIT
                    and prev % 1 == 0 then
                local changed = true
                if win == idx and cur > 0 then
                    cur = cur - c
                    if cur < 0 then cur = 0 end
                elseif win == idx + 1 and prev > 0 then
                    prev = prev - c
                    if prev < 0 then prev = 0 end
                else
                    changed = false
                end
                if changed then
                    redis.call('SET', key,
                               struct.pack('<dddd', win, cur, prev, w),
                               'KEEPTTL')
                    refunded = refunded + 1
                end
            end
        end
    end
end

return {refunded, now}
