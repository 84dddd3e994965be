-- Sliding window counter rate limiter (contract and maths: lua/README.md).
-- KEYS[1] = counter key; ARGV[1] = limit per window; ARGV[2] = window_ms.
-- Returns {allowed, remaining, retry_after_ms, reset_ms}.
--
-- State is the hash {win, cur, prev, w}: the index of the current fixed
-- window, the requests counted in it and in the window before, and the
-- window length they were counted with.  The previous window's count is
-- assumed spread evenly over it, so the share still inside the sliding
-- window shrinks linearly: estimate = prev * (W - e) / W + cur.

-- Strictly digits: "1e3", "-1", "2.5" or "" are caller bugs, and guessing
-- what they meant could silently give a wrong decision.
local function arg_int(s, lo, hi)
    if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
    local n = tonumber(s)
    if n < lo or n > hi then return nil end
    return n
end

local L = arg_int(ARGV[1], 1, 1000000000)
if not L then return redis.error_reply('ERR ratelimit: bad limit') end
local W = arg_int(ARGV[2], 1000, 86400000)
if not W then return redis.error_reply('ERR ratelimit: bad window') end
if #KEYS ~= 1 then return redis.error_reply('ERR ratelimit: need one key') end
local key = KEYS[1]

-- Server clock in whole ms.  Flooring is what keeps retry_after honest: a
-- caller that waits retry_after real ms reads a clock at least that much
-- further on.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / W)

-- Counts can never exceed the largest limit, since only allowed requests
-- are counted; anything else is garbage.
local function count(s)
    local n = tonumber(s)
    if n and n >= 0 and n <= 1000000000 and n == math.floor(n) then
        return n
    end
end

-- A field we cannot trust, or counts made with another window length
-- (their index means nothing now), void the whole state: fresh key.
local f = redis.call('HMGET', key, 'win', 'cur', 'prev', 'w')
local win, cur, prev = tonumber(f[1]), count(f[2]), count(f[3])
if not (win and cur and prev and tonumber(f[4]) == W
        and win >= 0 and win <= idx + 1 and win == math.floor(win)) then
    win, cur, prev = idx, 0, 0
end

-- The clock stepped back over a window edge (failover): stand at the start
-- of the stored window instead, which keeps every count and keeps the
-- promised times honest; everything below is relative to `at`.
local at = now
if win > idx then
    idx = win
    at = idx * W
elseif win == idx - 1 then
    prev, cur = cur, 0
elseif win < idx - 1 then
    prev, cur = 0, 0
end
local start = idx * W
local e = at - start

-- The one test every decision and every promised time goes through; it is
-- monotone in e, so the earliest passing ms can be found exactly.
local function ok(p, c, ms)
    return p * (W - ms) / W + c + 1 <= L
end

-- Earliest whole ms in [lo, W-1] of a window holding (p, c) at which a
-- request passes, or nil.  The closed form solves p*(W-ms)/W <= L-1-c and
-- can be a ulp off either way; the guard steps fix that.  They are bounded
-- so that no inconsistency could ever spin inside Redis; falling back to
-- W-1 (known to pass) stays honest.
local function first_ok(p, c, lo)
    if lo > W - 1 or not ok(p, c, W - 1) then return nil end
    local ms = lo
    if p > 0 then
        ms = math.ceil(W - (L - 1 - c) * W / p)
        if ms < lo then ms = lo end
        if ms > W - 1 then ms = W - 1 end
    end
    for _ = 1, 3 do
        if not ok(p, c, ms) then ms = ms + 1 end
    end
    if not ok(p, c, ms) then return W - 1 end
    for _ = 1, 3 do
        if ms > lo and ok(p, c, ms - 1) then ms = ms - 1 end
    end
    return ms
end

local est = prev * (W - e) / W + cur

if ok(prev, cur, e) then
    cur = cur + 1
    redis.call('HSET', key, 'win', string.format('%d', idx),
               'cur', string.format('%d', cur),
               'prev', string.format('%d', prev), 'w', string.format('%d', W))
    -- This window's count weighs until the end of the next one; after that
    -- the key is identical to an absent one.
    local reset = start + 2 * W - now
    redis.call('PEXPIRE', key, reset)
    local remaining = math.floor(L - est - 1)
    if remaining < 0 then remaining = 0 end
    return {1, remaining, 0, reset}
end

-- Denied: nothing is written.  The earliest pass is later in this window
-- (only while prev still weighs), else in the next one (where cur becomes
-- prev and nothing is counted yet), else at the start of the one after,
-- where the estimate is 0.  A later call rolls the stored windows over the
-- same way, so it computes exactly what we promise here.
local pass
local ms = first_ok(prev, cur, e + 1)
if ms then
    pass = start + ms
else
    ms = first_ok(cur, 0, 0)
    if ms then pass = start + W + ms else pass = start + 2 * W end
end
local reset
if cur > 0 then reset = start + 2 * W - now else reset = start + W - now end
local remaining = math.floor(L - est)
if remaining < 0 then remaining = 0 end
return {0, remaining, pass - now, reset}
