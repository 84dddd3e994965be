-- REFERENCE ONLY: the module's one-check script before lua/check.lua,
-- kept for t/lib/check_fuzz.lua, which holds check.lua to it.
-- Token bucket rate limiter (contract and maths: lua/README.md).
-- KEYS[1] = bucket key; ARGV[1] = limit (capacity); ARGV[2] = window_ms
-- (time to refill an empty bucket).  Returns
-- {allowed, remaining, retry_after_ms, reset_ms, now_ms}; allowed is -1
-- when the deadline ARGV[3] had passed (nothing counted).
--
-- State is one string, struct.pack('<ddd', ts, u, w): the usage u as of ms
-- timestamp ts, counted in 1/w of a token, w being the window_ms it was
-- written with.  In that unit the refill is exactly L per ms, so all the
-- arithmetic below is on whole numbers: exact in doubles while
-- limit * window_ms < 2^53.  Storing the usage rather than the token count
-- makes a limit change behave like the sliding window does: a raised limit
-- grants its extra capacity at once, a lowered one clamps the usage.
--
-- This runs for every request and Redis CPU is what the limiter costs.  A
-- call into C (math.floor, tonumber, type, string.*) costs as much as ten
-- lines of arithmetic in the Lua VM, so the allowed path makes only the
-- ones it cannot do without: 3 Redis calls (TIME, GET, SET), the pattern
-- checks of the two arguments, struct.unpack/pack and one string.format.
-- Hence x - x % 1 for floor(x) (exact for x >= 0), and numeric strings
-- that are already checked converted by arithmetic.

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

local LW = L * W                -- the capacity, in 1/W of a token
local ts, u, w
local v = redis.pcall('GET', key)       -- false if there is no key
if v and #v == 24 then
    ts, u, w = struct.unpack('<ddd', v)
elseif type(v) == 'table' then
    -- Not a string: a hash {used, ts} left by the version of this script
    -- that kept `used` in tokens carries on (rounded up to a whole unit);
    -- any other type raises Redis's own WRONGTYPE error here.
    local f = redis.call('HMGET', key, 'used', 'ts')
    local used = tonumber(f[1])
    ts = tonumber(f[2])
    if used and ts then
        u, w = used * W, W
        if u % 1 > 0 then u = u - u % 1 + 1 end
    else
        ts = nil
    end
end

-- A state we cannot trust (wrong length, NaN/inf, negative, a fraction,
-- out of range, a ts more than a window ahead) is a fresh key.
if ts and ts >= 0 and ts <= now + W and ts % 1 == 0
        and u >= 0 and u <= RL_MAX_LIMIT * RL_MAX_WINDOW_MS and u % 1 == 0
        and w >= RL_MIN_WINDOW_MS and w <= RL_MAX_WINDOW_MS and w % 1 == 0 then
    -- Counted with another window: the same tokens in the new unit,
    -- rounded up.
    if w ~= W then
        u = u * W / w
        if u % 1 > 0 then u = u - u % 1 + 1 end
    end
    -- Judge the old usage against the current limit.
    if u > LW then u = LW end
else
    ts, u = now, 0
end

-- The usage left now.  A clock that stepped back (failover) gives no
-- refill rather than a negative one; a whole window refills any bucket.
-- A later call must compute exactly what we promise below, so the tests
-- there repeat these very expressions.
local e = now - ts
local d = 0
if e < W then
    if e < 0 then e = 0 end
    d = u - e * L
    if d < 0 then d = 0 end
end

if d + W <= LW then
    d = d + W
    -- Full again (d - x * L <= 0) after x ms: ceil(d / L).  The quotient
    -- can round down across a whole number (never up), hence the one step
    -- up.
    local reset = d / L
    if reset % 1 > 0 then reset = reset - reset % 1 + 1 end
    if d - reset * L > 0 then reset = reset + 1 end
    if reset > W then reset = W end
    -- Once refilled the key is identical to an absent one: let it go then.
    redis.call('SET', key, struct.pack('<ddd', now, d, W),
               'PX', string.format('%d', reset))
    -- remaining = floor(L - d / W), the quotient checked the other way.
    local left = LW - d
    local remaining = left / W
    remaining = remaining - remaining % 1
    if remaining * W > left then remaining = remaining - 1 end
    return {1, remaining, 0, reset, now}
end

-- Denied: nothing is written, so the stored state (and its TTL) stays as
-- the last allowed request left it, and the times below are measured from
-- its ts exactly as the next call will measure them.  A call x ms after ts
-- passes iff x >= W or u - x * L + W <= LW; that is monotone in x, and x
-- fails now.  The closed form is exact up to the rounding of one quotient;
-- the bounded steps make it exactly the first passing ms even where
-- limit * window_ms passes 2^53, and the fallback W always passes.
local x = (u + W - LW) / L
if x % 1 > 0 then x = x - x % 1 + 1 end
for _ = 1, 3 do
    if x < W and u - x * L + W > LW then x = x + 1 end
end
if x > W then x = W end
if x < W and u - x * L + W > LW then x = W end
if x > 1 and u - (x - 1) * L + W <= LW then x = x - 1 end
local retry = ts + x - now
if retry < 1 then retry = 1 end
-- Full again after y ms, the same way (u > 0 here).
local y = u / L
if y % 1 > 0 then y = y - y % 1 + 1 end
if y < W and u - y * L > 0 then y = y + 1 end
if y > W then y = W end
-- Denied means less than one whole token left: remaining is 0.
return {0, 0, retry, ts + y - now, now}
