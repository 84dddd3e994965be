-- REFERENCE ONLY: the module's one-check script before lua/check.lua,
-- kept for t/lib/check_fuzz.lua, which holds check.lua to it.
-- Sliding window counter rate limiter (contract and maths: lua/README.md).
-- KEYS[1] = counter key; ARGV[1] = limit per window; ARGV[2] = window_ms.
-- ARGV[3] = deadline (optional).  Returns {allowed, remaining,
-- retry_after_ms, reset_ms, now_ms}; allowed is -1 when the deadline had
-- passed (nothing counted).
--
-- State is one string, struct.pack('<dddd', win, cur, prev, w): the index
-- of the current fixed window, the requests counted in it and in the
-- window before, and the window length they were counted with.  The
-- previous window's count is assumed spread evenly over it, so the share
-- still inside the sliding window shrinks linearly:
-- estimate = prev * (W - e) / W + cur.  All tests below are that times W,
-- on whole numbers: exact in doubles while the products stay below 2^53.
--
-- This runs for every request and Redis CPU is what the limiter costs.  A
-- call into C (math.floor, tonumber, type, string.*) costs as much as ten
-- lines of arithmetic in the Lua VM, so the allowed path makes only the
-- ones it cannot do without: 3 Redis calls (TIME, GET, SET), the pattern
-- checks of the two arguments and struct.unpack/pack; a TTL is only
-- printed when a window starts (SET ... KEEPTTL otherwise).  Hence
-- x - x % 1 for floor(x) (exact for x >= 0), and numeric strings that are
-- already checked converted by arithmetic.

-- RL_MAX_LIMIT, RL_MIN_WINDOW_MS and RL_MAX_WINDOW_MS are set by lines the
-- module puts in front of this file, from src/rl_rule.h (the bounds of a
-- rule everywhere); t/003-lua-scripts.t does the same.
--
-- Strictly digits: "1e3", "-1", "2.5", " 5" or "" are caller bugs, and
-- guessing what they meant could silently give a wrong decision.
local s = ARGV[1]
local L = s and string.find(s, '^%d+$') and s + 0
if not L or L < 1 or L > RL_MAX_LIMIT then
    return redis.error_reply('ERR ratelimit: bad limit')
end
s = ARGV[2]
local W = s and string.find(s, '^%d+$') and s + 0
if not W or W < RL_MIN_WINDOW_MS or W > RL_MAX_WINDOW_MS then
    return redis.error_reply('ERR ratelimit: bad window')
end
-- ARGV[3], optional: the deadline of the check, in ms of this server's
-- clock (0: none).  The edge node stops waiting then and takes its fail
-- path; a check that runs later (a stalled server wakes up, a long queue)
-- must count nothing, or it spends quota for a request that was never
-- checked.
s = ARGV[3]
local D = 0
if s then
    D = string.find(s, '^%d+$') and s + 0
    if not D then return redis.error_reply('ERR ratelimit: bad deadline') end
end
if #KEYS ~= 1 then return redis.error_reply('ERR ratelimit: need one key') end
local key = KEYS[1]

-- Server clock in whole ms.  Flooring is what keeps retry_after honest: a
-- caller that waits retry_after real ms reads a clock at least that much
-- further on.
local t = redis.call('TIME')
local us = t[2] + 0
local now = t[1] * 1000 + (us - us % 1000) / 1000
-- Every answer ends with now: the edge node learns this server's clock.
if D > 0 and now > D then return {-1, 0, 0, 0, now} end
-- floor(now / W); the quotient may round up to the next whole number in
-- the last ms of a long window, which the product tells exactly.
local idx = now / W
idx = idx - idx % 1
if idx * W > now then idx = idx - 1 end

local win, cur, prev, w
local packed = false
local v = redis.pcall('GET', key)       -- false if there is no key
if v and #v == 32 then
    win, cur, prev, w = struct.unpack('<dddd', v)
    packed = true
elseif type(v) == 'table' then
    -- Not a string: a hash left by the version of this script that kept
    -- these four as fields carries on; any other type raises Redis's own
    -- WRONGTYPE error here.
    local f = redis.call('HMGET', key, 'win', 'cur', 'prev', 'w')
    win, cur, prev, w = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]),
                        tonumber(f[4])
end

-- Counts can never exceed the largest limit, since only allowed requests
-- are counted.  Anything we cannot trust, or counts made with another
-- window length (their index means nothing now), void the whole state:
-- fresh key.  A stored window more than one ahead is no plausible clock
-- step: garbage too.
local keep = false
if w == W and win and cur and prev
        and win >= 0 and win <= idx + 1 and win % 1 == 0
        and cur >= 0 and cur <= RL_MAX_LIMIT and cur % 1 == 0
        and prev >= 0 and prev <= RL_MAX_LIMIT and prev % 1 == 0 then
    if win >= idx then
        -- No rollover: whoever wrote this state in this window set the
        -- TTL to the end of the next one, which is what it still is.
        keep = packed
    elseif win == idx - 1 then
        prev, cur = cur, 0
    else
        prev, cur = 0, 0
    end
else
    win, cur, prev = idx, 0, 0
end

-- The clock stepped back over a window edge (failover): stand at the start
-- of the stored window instead, which keeps every count and keeps the
-- promised times honest; everything below is relative to `at`.
local at = now
if win > idx then
    idx = win
    at = idx * W
end
local start = idx * W
local e = at - start
local LW = L * W

-- A request at ms `ms` of a window holding (p, c) passes iff
-- p * (W - ms) + (c + 1) * W <= LW: monotone in ms.
local weight = prev * (W - e)

if weight + (cur + 1) * W <= LW then
    cur = cur + 1
    local value = struct.pack('<dddd', idx, cur, prev, W)
    -- This window's count weighs until the end of the next one; after that
    -- the key is identical to an absent one.
    local reset = start + 2 * W - now
    if keep then
        redis.call('SET', key, value, 'KEEPTTL')
    else
        redis.call('SET', key, value, 'PX', string.format('%d', reset))
    end
    -- remaining = floor(L - estimate - 1): the number of further requests
    -- that would pass right now, the k-th iff weight + (cur + k) * W <= LW.
    -- The closed form is checked against that very test: one step either
    -- way makes it exact even where the products round (past 2^53, by far
    -- less than the W a request adds).
    local remaining = (LW - weight) / W
    remaining = remaining - remaining % 1 - cur
    if remaining > 0 and weight + (cur + remaining) * W > LW then
        remaining = remaining - 1
    elseif weight + (cur + remaining + 1) * W <= LW then
        remaining = remaining + 1
    end
    if remaining < 0 then remaining = 0 end
    return {1, remaining, 0, reset, now}
end

-- Denied: nothing is written.  The earliest pass is later in this window
-- (only while prev still weighs), else in the next one (where cur becomes
-- prev and nothing is counted yet), else at the start of the one after,
-- where the estimate is 0.  A later call rolls the stored windows over the
-- same way, so it computes exactly what we promise here.

local function ok(p, c, ms)
    return p * (W - ms) + (c + 1) * W <= LW
end

-- Earliest whole ms in [lo, W-1] of a window holding (p, c) at which a
-- request passes, or nil.  The closed form solves p * (W - ms) <= R and is
-- exact up to the rounding of one quotient; the bounded steps make it
-- exactly the first passing ms whatever the rounding, and the fallback
-- W - 1 is known to pass.
local function first_ok(p, c, lo)
    if lo > W - 1 or not ok(p, c, W - 1) then return nil end
    local ms = lo
    if p > 0 then
        local q = (LW - (c + 1) * W) / p        -- >= 0: ok at W - 1
        ms = W - (q - q % 1)
        if ms < lo then ms = lo end
        if ms > W - 1 then ms = W - 1 end
    end
    for _ = 1, 3 do
        if not ok(p, c, ms) then ms = ms + 1 end
    end
    if ms > W - 1 or not ok(p, c, ms) then return W - 1 end
    for _ = 1, 3 do
        if ms > lo and ok(p, c, ms - 1) then ms = ms - 1 end
    end
    return ms
end

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
-- remaining = max(0, floor(L - estimate)), which is 0: denied means
-- L - estimate < 1.
return {0, 0, pass - now, reset, now}
